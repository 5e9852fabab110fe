"""The viewer page in headless Chromium, driven over the DevTools protocol (:mod:`viewer_cdp`, stdlib only).

Loads a study through the local server, waits until NiiVue has loaded CT, PET, mask and ground truth
(``window.viewerState``), clicks a lesion row (a real mouse event) and checks that the crosshair went to that
lesion's centroid, saves a screenshot, and checks that no request left 127.0.0.1. Skips without Chromium
(``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from viewer_cdp import Browser, chromium
from viewer_fixtures import ViewerCohort

from h2aseg.viewer.server import ViewerServer


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (chromium or chromium-browser; .ci/run installs it with apt-get)")
    b = Browser(exe, tmp_path / "profile")
    for domain in ("Network", "Runtime", "Page"):
        b.call(f"{domain}.enable")
    yield b
    b.close()


def test_the_page_loads_the_study_and_a_lesion_click_moves_the_crosshair(
    browser: Browser, served: ViewerServer, viewer_cohort: ViewerCohort, tmp_path: Path
) -> None:
    case = viewer_cohort.cases[0]  # two lesions, table computed by the server
    browser.call("Page.navigate", {"url": served.url + "study/" + quote(case.case_id, safe="")})
    state = browser.wait_for(
        "window.viewerState && (viewerState.ready || viewerState.error) && viewerState", 150
    )
    assert state["error"] is None, state["error"]
    assert state["caseId"] == case.case_id and state["loaded"] == state["expected"] == 4  # CT, PET, mask, GT
    assert browser.evaluate("nv.volumes.map(v => v.name)") == [
        case.ct.name,
        case.pet.name,
        f"{case.case_id}.nii.gz",
        case.label.name,
    ]
    rows = browser.evaluate("[...document.querySelectorAll('#lesions tbody tr')].map(r => r.dataset.lesion)")
    assert state["lesionCount"] == len(rows) == 2
    assert browser.wait_for("viewerState.mipsLoaded === 2", 60)  # the server-drawn coronal and sagittal MIPs
    sizes = browser.evaluate("[...document.querySelectorAll('#mips img')].map(i => i.naturalWidth)")
    assert len(sizes) == 2 and all(w > 50 for w in sizes), sizes
    study = json.loads(
        browser.evaluate(f"fetch('/api/study/{quote(case.case_id, safe='')}').then(r => r.text())")
    )
    for n in (2, 1):
        lesion = study["lesions"]["rows"][n - 1]
        browser.click(f"#lesions tbody tr:nth-child({n})")
        moved = browser.wait_for(
            f"viewerState.selectedLesion === {lesion['lesion_id']} && viewerState.crosshair"
        )
        np.testing.assert_allclose(moved["mm"], lesion["centroid_mm"], atol=0.01)
        np.testing.assert_allclose(moved["vox"], lesion["centroid_vox"], atol=0.01)
        assert browser.evaluate("document.querySelector('#lesions tbody tr.selected').dataset.lesion") == str(
            n
        )
    windows = "nv.volumes.slice(0, 2).map(v => [v.cal_min, v.cal_max])"
    assert browser.evaluate(windows) == [[-160, 240], [0, 10]]  # soft tissue W400/L40, SUV 0-10
    browser.click(".ct-preset[data-level='-600']")
    browser.click(".suv-preset[data-min='2.5']")
    assert browser.evaluate(windows) == [[-1350, 150], [2.5, 10]]  # lung W1500/L-600
    browser.click(".ct-preset[data-level='300']")
    assert browser.evaluate(windows)[0] == [-700, 1300]  # bone W2000/L300
    shot = browser.screenshot(tmp_path / "viewer.png")
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 500 and pixels.std() > 10  # not a blank page
    assert browser.evaluate("viewerState.cspViolations") == []
    urls = [
        e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"
    ]
    assert any(u.endswith("/static/niivue.umd.js") for u in urls) and any("/files/pred/" in u for u in urls)
    left = [u for u in urls if not u.startswith((served.url, "data:", "blob:"))]
    assert left == [], f"requests that left 127.0.0.1: {left}"
