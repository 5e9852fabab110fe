"""``h2aseg view``'s server: path guard, JSON API on a tiny cohort, file and Host rules, the CLI."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner
from viewer_fixtures import ViewerCohort

from h2aseg.cli import app
from h2aseg.viewer.catalog import Catalog, ViewerError
from h2aseg.viewer.server import HOST, STATIC_DIR, Refused, ViewerServer, guarded_path, make_server


# ------------------------------------------------------------------------------------------ path guard
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    (root / "a.nii.gz").write_bytes(b"inside")
    (root / "sub" / "b.nii.gz").write_bytes(b"inside too")
    (tmp_path / "secret.nii.gz").write_bytes(b"outside")
    (root / "escape.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    (root / "outdir").symlink_to(tmp_path, target_is_directory=True)
    (root / "inner.nii.gz").symlink_to(root / "sub" / "b.nii.gz")  # a link that stays inside is fine
    return root


def _status(root: Path, rel: str) -> int:
    with pytest.raises(Refused) as e:
        guarded_path(root, rel)
    return int(e.value.status)


def test_the_guard_serves_files_inside_the_folder(folder: Path) -> None:
    assert guarded_path(folder, "a.nii.gz").read_bytes() == b"inside"
    assert guarded_path(folder, "sub/b.nii.gz").read_bytes() == b"inside too"
    assert guarded_path(folder, "inner.nii.gz").read_bytes() == b"inside too"


@pytest.mark.parametrize(
    "rel",
    ["../secret.nii.gz", "sub/../../secret.nii.gz", "sub/../a.nii.gz", "./a.nii.gz", "..", "sub/.."],
)
def test_the_guard_refuses_dot_dot(folder: Path, rel: str) -> None:
    assert _status(folder, rel) == 403


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "//etc/passwd", "C:/Windows/win.ini", "sub\\b.nii.gz", "a\x00"]
)
def test_the_guard_refuses_absolute_paths_and_odd_characters(folder: Path, rel: str) -> None:
    assert _status(folder, rel) == 403


def test_the_guard_refuses_symlinks_out_of_the_folder(folder: Path) -> None:
    assert (folder / "escape.nii.gz").read_bytes() == b"outside"  # the link works, but is not served
    assert _status(folder, "escape.nii.gz") == 403
    assert _status(folder, "outdir/secret.nii.gz") == 403


def test_the_guard_answers_404_for_missing_files_and_folders(folder: Path) -> None:
    assert _status(folder, "missing.nii.gz") == 404
    assert _status(folder, "sub") == 404
    assert _status(folder, "") == 404


# ------------------------------------------------------------------------------------------------ HTTP
def _get(server: ViewerServer, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw GET (http.client sends the path exactly as given: no ``..`` normalisation)."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"{HOST}:{server.port}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _json(server: ViewerServer, path: str) -> dict:
    status, headers, body = _get(server, path)
    assert status == 200 and headers["content-type"] == "application/json", body
    return json.loads(body)


def test_it_listens_on_127_0_0_1_only(served: ViewerServer) -> None:
    assert served.server_address[0] == "127.0.0.1" and served.url == f"http://127.0.0.1:{served.port}/"


def test_the_study_list(served: ViewerServer, viewer_cohort: ViewerCohort) -> None:
    studies = _json(served, "/api/studies")["studies"]
    predicted = [c for c in viewer_cohort.cases if c.case_id in viewer_cohort.centroids_vox]
    assert [s["case_id"] for s in studies] == [c.case_id for c in predicted]  # the 3rd has no prediction
    assert [s["patient_id"] for s in studies] == [c.patient_id for c in predicted]
    assert all(s["has_gt"] for s in studies)  # the AutoPET layout's SEG
    assert studies[0]["page"] == "/study/" + quote(predicted[0].case_id, safe="")
    status, headers, body = _get(served, studies[0]["page"])
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/niivue.umd.js" in body and b"https://" not in body
    assert "default-src 'none'" in headers["content-security-policy"]


def test_a_study_gives_its_volumes_as_the_original_bytes(
    served: ViewerServer, viewer_cohort: ViewerCohort
) -> None:
    case = viewer_cohort.cases[0]
    study = _json(served, "/api/study/" + quote(case.case_id, safe=""))
    assert (study["index"], study["count"], study["prev"]) == (0, 2, None)
    assert study["next"] == viewer_cohort.cases[1].case_id
    files = {
        "ct": case.ct,
        "pet": case.pet,
        "gt": case.label,
        "mask": viewer_cohort.pred / f"{case.case_id}.nii.gz",
    }
    for key, path in files.items():
        vol = study["volumes"][key]
        assert vol["name"] == path.name and vol["url"].startswith(
            "/files/pred/" if key == "mask" else "/files/data/"
        )
        status, headers, body = _get(served, vol["url"])
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        assert body == path.read_bytes() and body[:2] == b"\x1f\x8b"  # still gzip: NiiVue inflates it


@pytest.mark.parametrize("index", [0, 1])
def test_lesion_rows_have_their_centroids_in_mm_and_voxels(
    served: ViewerServer, viewer_cohort: ViewerCohort, index: int
) -> None:
    case = viewer_cohort.cases[index]
    lesions = _json(served, "/api/study/" + quote(case.case_id, safe=""))["lesions"]
    assert lesions["error"] is None
    # study 1 has predict --quantify's table beside its mask; study 0's is computed with quantify's code
    expected_source = f"from {case.case_id}_lesions.csv" if index == 1 else "computed"
    assert lesions["source"].startswith(expected_source)
    assert {"lesion_id", "volume_ml", "suv_max", "suv_peak", "tlg"} <= set(lesions["columns"])
    affine = nib.load(case.ct).affine
    got = sorted(lesions["rows"], key=lambda r: r["centroid_vox"])
    want = sorted(viewer_cohort.centroids_vox[case.case_id])
    assert len(got) == len(want)
    for row, vox in zip(got, want, strict=True):
        np.testing.assert_allclose(row["centroid_vox"], vox, atol=1e-3)
        np.testing.assert_allclose(row["centroid_mm"], (affine @ [*vox, 1.0])[:3], atol=1e-4)
        assert row["centroid_mm"] == [row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]]


def test_a_shared_lesions_csv_is_filtered_by_case(viewer_cohort: ViewerCohort, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    case = viewer_cohort.cases[0]
    (pred / f"{case.case_id}.nii.gz").write_bytes(
        (viewer_cohort.pred / f"{case.case_id}.nii.gz").read_bytes()
    )
    header = "case_id,lesion_id,centroid_x_mm,centroid_y_mm,centroid_z_mm,suv_max\n"
    (pred / "lesions.csv").write_text(header + f"other,1,0,0,0,9\n{case.case_id},7,1.5,2.5,3.5,4.25\n")
    rows = Catalog(pred, viewer_cohort.data).lesions(case.case_id)
    assert rows["source"] == "from lesions.csv" and rows["columns"][0] == "lesion_id"
    assert [(r["lesion_id"], r["suv_max"], r["centroid_mm"]) for r in rows["rows"]] == [
        (7, 4.25, [1.5, 2.5, 3.5])
    ]


def test_lesion_rows_come_most_confident_first(viewer_cohort: ViewerCohort, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    case = viewer_cohort.cases[0]
    (pred / f"{case.case_id}.nii.gz").write_bytes(
        (viewer_cohort.pred / f"{case.case_id}.nii.gz").read_bytes()
    )
    header = "case_id,lesion_id,centroid_x_mm,centroid_y_mm,centroid_z_mm,prob_mean,tta_volume_cv\n"
    body = "".join(f"{case.case_id},{i},0,0,0,{p},0.1\n" for i, p in ((1, 0.6), (2, ""), (3, 0.95), (4, 0.7)))
    (pred / f"{case.case_id}_lesions.csv").write_text(header + body)
    rows = Catalog(pred, viewer_cohort.data).lesions(case.case_id)
    assert {"prob_mean", "tta_volume_cv"} <= set(rows["columns"])
    assert [(r["lesion_id"], r["prob_mean"]) for r in rows["rows"]] == [
        (3, 0.95),
        (4, 0.7),
        (1, 0.6),
        (2, None),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/files/data/../../../../etc/passwd",
        "/files/data/%2e%2e/%2e%2e/etc/passwd",
        "/files/data/%2Fetc%2Fpasswd",
        "/files/data//etc/passwd",
        "/files/pred/..%2F..%2Fdata/phantom.json",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
    ],
)
def test_requests_out_of_the_folders_are_refused(served: ViewerServer, path: str) -> None:
    status, _, body = _get(served, path)
    assert status == 403, body


def test_only_image_files_are_served_and_only_from_the_given_folders(
    served: ViewerServer, viewer_cohort: ViewerCohort
) -> None:
    assert (viewer_cohort.data / "phantom.json").is_file()
    assert _get(served, "/files/data/phantom.json")[0] == 403
    assert _get(served, "/files/secrets/x.nii.gz")[0] == 404
    assert _get(served, "/files/data/nothing.nii.gz")[0] == 404
    assert _get(served, "/api/study/nobody")[0] == 404
    assert _get(served, "/etc/passwd")[0] == 404


def test_a_symlink_out_of_the_predictions_folder_is_refused(served: ViewerServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"not yours")
    link = served.catalog.roots["pred"] / "zz-link.nii.gz"
    link.symlink_to(outside)
    try:
        assert _get(served, "/files/pred/zz-link.nii.gz")[0] == 403
    finally:
        link.unlink()


def test_a_foreign_host_header_is_refused(served: ViewerServer) -> None:
    assert _get(served, "/api/studies", host=f"evil.example:{served.port}")[0] == 403
    assert _get(served, "/api/studies", host=f"localhost:{served.port}")[0] == 200


def test_the_static_files_are_the_vendored_bundle_and_its_licence(served: ViewerServer) -> None:
    status, headers, body = _get(served, "/static/niivue.umd.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == (STATIC_DIR / "niivue.umd.js").read_bytes() and len(body) < 3_000_000
    status, _, body = _get(served, "/static/LICENSE.niivue.txt")
    assert status == 200 and b"BSD 2-Clause License" in body and b"0.69.0" in body


def test_a_prediction_outside_the_folders_is_refused_at_start(
    viewer_cohort: ViewerCohort, tmp_path: Path
) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    case = viewer_cohort.cases[0]
    os.symlink(viewer_cohort.pred / f"{case.case_id}.nii.gz", pred / f"{case.case_id}.nii.gz")
    with pytest.raises(ViewerError, match="outside the folders given"):
        Catalog(pred, viewer_cohort.data)


# ------------------------------------------------------------------------------------------------- CLI
def test_the_cli_explains_and_refuses_bad_folders(viewer_cohort: ViewerCohort, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["view", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output and "--host" not in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        app, ["view", "--pred", str(tmp_path / "empty"), "--data", str(viewer_cohort.data)]
    )
    assert result.exit_code == 2 and "no prediction is named after a case" in result.output
    result = CliRunner().invoke(
        app, ["view", "--pred", str(tmp_path / "nope"), "--data", str(viewer_cohort.data)]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


# The child's SIGINT disposition is set explicitly: a process inherits an ignored SIGINT across exec, and
# a test suite run as a background job of a script (``make test &``, some CI runners) has it ignored; the
# viewer started there ignored Ctrl-C and this test waited out its timeout (sessions 25-26).
@pytest.mark.parametrize(
    ("sigint", "stop", "hint"),
    [
        (signal.SIG_DFL, signal.SIGINT, "Ctrl-C stops it"),  # an interactive terminal
        (signal.SIG_IGN, signal.SIGTERM, "kill {pid} stops it"),  # a script's background job
    ],
    ids=["ctrl-c", "background-job"],
)
def test_the_command_prints_the_address_and_how_to_stop_it_and_serves(
    viewer_cohort: ViewerCohort, sigint: signal.Handlers, stop: signal.Signals, hint: str
) -> None:
    args = ["view", "--pred", str(viewer_cohort.pred), "--data", str(viewer_cohort.data), "--port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "h2aseg", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"open (http://127\.0\.0\.1:(\d+)/) \((.*)\)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        assert match.group(3) == hint.format(pid=proc.pid)
        with urllib.request.urlopen(match.group(1) + "api/studies", timeout=30) as resp:
            assert len(json.load(resp)["studies"]) == 2
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_an_unreadable_study_file_is_a_500_naming_it_and_the_server_goes_on(
    viewer_cohort: ViewerCohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import threading

    data, pred = tmp_path / "data", tmp_path / "pred"
    shutil.copytree(viewer_cohort.data, data)
    shutil.copytree(viewer_cohort.pred, pred)
    broken, fine = viewer_cohort.cases[0], viewer_cohort.cases[1]
    ct = data / broken.ct.relative_to(viewer_cohort.data)
    ct.write_bytes(b"\x1f\x8b not a gzip stream")  # a truncated download, say
    server = make_server(pred, data, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, headers, body = _get(server, "/api/study/" + quote(broken.case_id, safe=""))
        assert status == 500 and headers["content-type"] == "application/json"
        reason = json.loads(body)["reason"]
        assert ct.name in reason, reason
        assert len(server.problems) == 1 and ct.name in server.problems[0]
        assert ct.name in capsys.readouterr().err  # printed although the server is quiet
        assert _json(server, "/api/study/" + quote(fine.case_id, safe=""))["volumes"]["ct"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------------------ MIPs
def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.mark.parametrize("index", [0, 1])
def test_a_study_has_its_pet_mips_as_pngs(
    served: ViewerServer, viewer_cohort: ViewerCohort, index: int
) -> None:
    from h2aseg.analysis.html_report import mip_images
    from h2aseg.data.io import read_volume
    from h2aseg.evaluation.quantify import mask_on_suv_grid

    case = viewer_cohort.cases[index]
    study = _json(served, "/api/study/" + quote(case.case_id, safe=""))
    mips = study["mips"]
    assert set(mips) == {"coronal", "sagittal"}
    suv = read_volume(case.pet, dtype=None)
    mask = mask_on_suv_grid(read_volume(viewer_cohort.pred / f"{case.case_id}.nii.gz", dtype=None), suv)
    expected = mip_images(suv.array, mask.array, suv.affine)
    for view, url in mips.items():
        assert url == f"/api/mip/{quote(case.case_id, safe='')}/{view}.png"
        status, headers, body = _get(served, url)
        assert status == 200 and headers["content-type"] == "image/png", body[:200]
        assert body[:4] == b"\x89PNG"
        assert _png_size(body) == expected[view][1]  # (width, height), as mip_images gives it
        assert body == expected[view][0]  # the report's own picture
    assert set(served.catalog._mips) == {case.case_id}  # drawn once, cached


@pytest.mark.parametrize("name", ["axial.png", "coronal", "coronal.jpg", "", "../coronal.png"])
def test_a_bad_mip_view_is_a_404(served: ViewerServer, viewer_cohort: ViewerCohort, name: str) -> None:
    status, _, _ = _get(served, f"/api/mip/{quote(viewer_cohort.cases[0].case_id, safe='')}/{name}")
    assert status == 404


def test_the_mip_of_an_unknown_study_is_a_404(served: ViewerServer, viewer_cohort: ViewerCohort) -> None:
    unpredicted = viewer_cohort.cases[2].case_id  # a case of the data without a prediction
    for case_id in ("nobody", unpredicted):
        assert _get(served, f"/api/mip/{quote(case_id, safe='')}/coronal.png")[0] == 404
    assert _get(served, "/api/mip/coronal.png")[0] == 404


def test_an_unreadable_pet_makes_the_mip_a_500(viewer_cohort: ViewerCohort, tmp_path: Path) -> None:
    import shutil
    import threading

    data, pred = tmp_path / "data", tmp_path / "pred"
    shutil.copytree(viewer_cohort.data, data)
    shutil.copytree(viewer_cohort.pred, pred)
    case = viewer_cohort.cases[0]
    pet = data / case.pet.relative_to(viewer_cohort.data)
    pet.write_bytes(b"\x1f\x8b not a gzip stream")
    server = make_server(pred, data, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, headers, body = _get(server, f"/api/mip/{quote(case.case_id, safe='')}/coronal.png")
        assert status == 500 and headers["content-type"] == "application/json"
        assert pet.name in json.loads(body)["reason"]
        assert case.case_id not in server.catalog._mips  # not cached: a fixed file is drawn next time
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
