"""The HTML report (`h2aseg.analysis.html_report`, `predict --report`, `quantify --report`): the tables hold
the lesions.csv rows, the images are PNGs with each lesion outlined in its colour where it lies, the pages
make no external request and escape their text, the index links every page; and Chromium loads them."""

from __future__ import annotations

import base64
import csv
import io
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from h2aseg.analysis.html_report import (
    INDEX_NAME,
    index_page,
    lesion_colour,
    page_href,
    study_page,
    write_index,
    write_study_report,
)
from h2aseg.cli import app
from h2aseg.data.io import write_volume
from h2aseg.evaluation.quantify import Quantification, lesions_csv, quantify_arrays
from h2aseg.synth import write_cohort

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from training_fixtures import save_tiny_checkpoint

# LAS, as autoPET's files: array i grows towards the patient's left, so low i is drawn on the viewer's left
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, 2.0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
VOXEL_ML = 2 * 2 * 3 / 1000
BIG = (slice(3, 7), slice(3, 7), slice(2, 5))  # 48 voxels, SUV 6: patient's right, posterior, low
SMALL = (slice(12, 15), slice(12, 15), slice(7, 9))  # 18 voxels, SUV 3 and one of 4.5
SETTINGS = {"checkpoint": "best.pt", "flip TTA": True, "ROI": (32, 32, 32)}


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, np.ndarray, Quantification]:
    suv = np.full((20, 20, 12), 0.5, np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    suv[BIG], mask[BIG] = 6.0, 1
    suv[SMALL], mask[SMALL] = 3.0, 1
    suv[13, 13, 8] = 4.5
    return suv, mask, quantify_arrays(suv, mask, AFFINE, case_id="case-1")


@pytest.fixture(scope="module")
def page(study: tuple[np.ndarray, np.ndarray, Quantification]) -> str:
    suv, mask, q = study
    return study_page(suv, mask, AFFINE, q, SETTINGS, index_href=INDEX_NAME)


class Doc(HTMLParser):
    """The parts of a page the tests read: tables by id (rows of (attributes, text) cells), images, links."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[tuple[dict[str, str], str]]]] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.body: dict[str, str] = {}
        self.text: list[str] = []
        self.urls: list[str] = []  # every src/href/action/srcset/poster value
        self._table: list[list[tuple[dict[str, str], str]]] | None = None
        self._cell: tuple[dict[str, str], list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href", "action", "srcset", "poster")]
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = (a, [])
        elif tag == "img":
            self.images.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)

    def rows(self, table_id: str) -> list[dict[str, tuple[str, str]]]:
        """Body rows of a table: data-col -> (data-value, shown text)."""
        return [
            {a["data-col"]: (a["data-value"], text) for a, text in row if "data-col" in a}
            for row in self.tables[table_id]
            if row and any("data-col" in a for a, _ in row)
        ]


def _decode(img: dict[str, str]) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    png = base64.b64decode(img["src"][len(prefix) :], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert (image.width, image.height) == (int(img["width"]), int(img["height"]))
    return np.asarray(image.convert("RGB")).astype(int)


def _colour_in(rgb: np.ndarray, colour: str, cols: tuple[float, float], rows: tuple[float, float]) -> int:
    """Pixels of ``colour`` (within 40 per channel) in a box given in voxel units of the display grid."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(rgb - target).max(axis=-1) <= 40
    sy, sx = rgb.shape[0] / 12, rgb.shape[1] / 20  # display grid: 12 rows (z), 20 columns
    r0, r1 = max(int(rows[0] * sy), 0), int(rows[1] * sy)
    c0, c1 = max(int(cols[0] * sx), 0), int(cols[1] * sx)
    return int(near[r0:r1, c0:c1].sum())


# --------------------------------------------------------------------------------------- pure checks
def test_lesion_table_has_the_lesions_csv_rows(study: tuple, page: str) -> None:
    _, _, q = study
    doc = Doc(page)
    rows = doc.rows("lesion-table")
    assert len(rows) == 2
    by_voxels = {int(r["voxels"][0]): r for r in rows}
    big, small = by_voxels[48], by_voxels[18]
    assert float(big["volume_ml"][0]) == pytest.approx(48 * VOXEL_ML) and big["volume_ml"][1] == "0.576"
    assert float(big["suv_max"][0]) == 6.0 and float(big["suv_mean"][0]) == 6.0
    assert float(big["tlg"][0]) == pytest.approx(6.0 * 48 * VOXEL_ML)
    assert small["suv_max"][1] == "4.50" and float(small["volume_ml"][0]) == pytest.approx(18 * VOXEL_ML)
    assert float(small["suv_mean"][0]) == pytest.approx((17 * 3.0 + 4.5) / 18)
    # every cell is the lesions.csv cell of the same lesion_id
    csv_rows = {r["lesion_id"]: r for r in csv.DictReader(io.StringIO(lesions_csv(q)))}
    for row in rows:
        expected = csv_rows[row["lesion_id"][0]]
        assert {k: v for k, (v, _) in row.items()} == {k: v for k, v in expected.items() if k != "case_id"}
    summary = {k: v for row in doc.rows("patient-summary") for k, (v, _) in row.items()}
    assert summary["lesion_count"] == "2" and float(summary["mtv_ml"]) == pytest.approx(66 * VOXEL_ML)
    assert "gt_lesions" not in summary and "detected" not in page
    settings = dict((cells[0][1], cells[1][1]) for cells in doc.tables["settings-table"])
    assert settings == {"checkpoint": "best.pt", "flip TTA": "yes", "ROI": "32 × 32 × 32"}


def test_images_are_pngs_with_each_lesion_outlined_where_it_lies(study: tuple, page: str) -> None:
    _, _, q = study
    doc = Doc(page)
    assert len(doc.images) == 2
    coronal, sagittal = (_decode(img) for img in doc.images)
    big = next(les.lesion_id for les in q.lesions if les.voxels == 48)
    small = next(les.lesion_id for les in q.lesions if les.voxels == 18)
    # coronal: the big lesion (low i = patient's right) on the viewer's left, columns 3-6, rows 11-k = 7-9
    assert _colour_in(coronal, lesion_colour(big), (2, 8), (6, 11)) > 50
    assert _colour_in(coronal, lesion_colour(big), (10, 20), (0, 12)) == 0
    assert _colour_in(coronal, lesion_colour(small), (11, 16), (2, 6)) > 50
    # sagittal: anterior (high j) on the left, so the big lesion (low j) lies right, columns 19-j = 13-16
    assert _colour_in(sagittal, lesion_colour(big), (12, 18), (6, 11)) > 50
    assert _colour_in(sagittal, lesion_colour(small), (4, 9), (2, 6)) > 50
    assert _colour_in(sagittal, lesion_colour(small), (10, 20), (0, 12)) == 0
    # the swatch beside each lesion id is its outline's colour
    assert f'background:{lesion_colour(big)}"></span>{big}</td>' in page


def test_pages_make_no_external_request(study: tuple, page: str) -> None:
    _, _, q = study
    index = index_page([(q, "case-1.html")])
    for text in (page, index):
        assert "http://" not in text and "https://" not in text
        urls = Doc(text).urls
        links = [u for u in urls if not u.startswith("data:image/png;base64,")]
        assert urls and all(u.endswith(".html") and ":" not in u and not u.startswith("/") for u in links)
        assert (
            "<link" not in text and "<script src" not in text and "@import" not in text and "url(" not in text
        )
        assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_text_is_escaped(study: tuple) -> None:
    suv, mask, q = study
    evil = "<b>&\"x'</b>"
    q2 = Quantification(evil, q.lesions, q.patient)
    page = study_page(suv, mask, AFFINE, q2, {"<script>alert(1)</script>": evil}, index_href='a"b.html')
    index = index_page([(q2, page_href("x y#.html"))], title=evil)
    for text in (page, index):
        assert "<b>" not in text and "<script>alert" not in text
        assert "&lt;b&gt;&amp;&quot;x&#x27;&lt;/b&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and 'href="a&quot;b.html"' in page
    assert Doc(index).links == ["x%20y%23.html"]
    assert evil in "".join(Doc(page).text)  # the browser shows the text as given


def test_index_links_to_each_page(study: tuple, tmp_path: Path) -> None:
    suv, mask, q = study
    empty = quantify_arrays(suv, np.zeros_like(mask), AFFINE, case_id="no lesions here")
    pages = [
        write_study_report(tmp_path / f"{x.case_id}.html", suv, m, AFFINE, x, SETTINGS, index_href=INDEX_NAME)
        for x, m in ((q, mask), (empty, np.zeros_like(mask)))
    ]
    index = write_index(
        tmp_path / INDEX_NAME, [(x, page_href(p)) for x, p in zip((q, empty), pages, strict=True)]
    )
    doc = Doc(index.read_text())
    assert [unquote(h) for h in doc.links] == ["case-1.html", "no lesions here.html"]
    assert all((tmp_path / unquote(h)).is_file() for h in doc.links)
    rows = doc.rows("study-table")
    assert [r["lesion_count"][0] for r in rows] == ["2", "0"] and rows[1]["suv_max"][1] == "–"
    assert float(rows[0]["mtv_ml"][0]) == pytest.approx(66 * VOXEL_ML) and rows[0]["suv_max"][1] == "6.00"
    empty_doc = Doc(pages[1].read_text())
    assert empty_doc.rows("lesion-table") == [] and "no lesions" in pages[1].read_text()
    assert len(empty_doc.images) == 2 and empty_doc.links == [INDEX_NAME]


def test_a_mask_that_is_not_the_tables_is_refused(study: tuple) -> None:
    suv, mask, q = study
    other = mask.copy()
    other[BIG] = 0
    with pytest.raises(ValueError, match="case-1: the mask's 1 lesion"):
        study_page(suv, other, AFFINE, q, {})


# -------------------------------------------------------------------------------------- the browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(exe: str, page: Path, profile: Path) -> str:
    cmd = [
        exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_loads_the_images_and_shows_the_table(study: tuple, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (chromium or chromium-browser; .ci/run installs it with apt-get)")
    suv, mask, q = study
    page = write_study_report(tmp_path / "case 1.html", suv, mask, AFFINE, q, SETTINGS, index_href=INDEX_NAME)
    index = write_index(tmp_path / INDEX_NAME, [(q, page_href(page))])
    dom = Doc(_dump_dom(exe, page, tmp_path / "profile"))
    assert dom.body.get("data-images-loaded") == "true", "an <img> did not load"
    assert len(dom.images) == 2 and len(dom.rows("lesion-table")) == 2
    index_dom = Doc(_dump_dom(exe, index, tmp_path / "profile"))
    assert index_dom.body.get("data-images-loaded") == "true" and index_dom.links == ["case%201.html"]


# ------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def _assert_page_matches_csv(page: Path, lesions_csv_path: Path) -> None:
    """The page's rows are the CSV's, most confident first (prob_mean descending, then lesion_id)."""
    rows = Doc(page.read_text()).rows("lesion-table")
    expected = sorted(
        csv.DictReader(lesions_csv_path.open()),
        key=lambda e: (e["prob_mean"] == "", -float(e["prob_mean"] or 0), int(e["lesion_id"])),
    )
    assert [{k: v for k, (v, _) in r.items()} for r in rows] == [
        {k: v for k, v in e.items() if k != "case_id"} for e in expected
    ]


def test_predict_report_writes_a_page_per_case_and_the_index(checkpoint: Path, tmp_path: Path) -> None:
    cases = write_cohort(
        tmp_path / "data", 2, "autopet", seed=3, shape=(36, 40, 30), spacing=(10.0, 10.0, 12.0)
    )
    out = tmp_path / "pred"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(tmp_path / "data"),
        "--out-dir",
        str(out),
    ]
    result = CliRunner().invoke(app, [*args, "--report", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 report page(s) and the index" in result.output
    index = Doc((out / "report" / INDEX_NAME).read_text())
    assert sorted(unquote(h) for h in index.links) == sorted(f"{c.case_id}.html" for c in cases)
    for case, row in zip(cases, index.rows("study-table"), strict=True):
        page = out / "report" / f"{case.case_id}.html"
        _assert_page_matches_csv(page, out / f"{case.case_id}_lesions.csv")  # --report implies --quantify
        # ... and --probabilities: the lesions' confidence is measured
        assert (out / f"{case.case_id}_probability.nii.gz").is_file()
        probs = [r["prob_mean"] for r in csv.DictReader((out / f"{case.case_id}_lesions.csv").open())]
        assert all(0.0 <= float(p) <= 1.0 for p in probs)
        (patient,) = csv.DictReader((out / f"{case.case_id}_patient.csv").open())
        assert row["lesion_count"][0] == patient["lesion_count"]
        doc = Doc(page.read_text())
        settings = dict((cells[0][1], cells[1][1]) for cells in doc.tables["settings-table"])
        assert settings["PET (SUV)"] == str(case.pet) and settings["checkpoint"] == str(checkpoint)
        viewer = f"http://127.0.0.1:8765/study/{quote(case.case_id, safe='')}"  # h2aseg view's page of it
        assert len(doc.images) == 2 and doc.links == [INDEX_NAME, viewer]
        command = f"h2aseg view --pred {out.resolve()} --data {(tmp_path / 'data').resolve()}"
        assert f"<code>{command}</code>" in page.read_text()
    single = tmp_path / "one" / "mask.nii.gz"
    one = ["--ct", str(cases[0].ct), "--pet", str(cases[0].pet), "--out", str(single)]
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), *one, "--report"])
    assert result.exit_code == 0, result.output
    _assert_page_matches_csv(single.parent / "report" / "mask.html", single.parent / "mask_lesions.csv")
    assert not (single.parent / "report" / INDEX_NAME).exists()
    assert "viewer-link" not in (single.parent / "report" / "mask.html").read_text()  # no data folder


def test_quantify_report(tmp_path: Path, study: tuple) -> None:
    suv, mask, _ = study
    gt = np.zeros_like(mask)
    gt[BIG] = 1
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("suv", "mask", "gt")}
    for key, arr in (("suv", suv), ("mask", mask), ("gt", gt)):
        write_volume(paths[key], arr, AFFINE)
    out = tmp_path / "q"
    args = ["quantify", "--pet", str(paths["suv"]), "--mask", str(paths["mask"]), "--gt", str(paths["gt"])]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--report", "--case-id", "patient 7"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "Lesion report: patient 7" in (out / "report.html").read_text()
    _assert_page_matches_csv(out / "report.html", out / "lesions.csv")
    rows = Doc((out / "report.html").read_text()).rows("lesion-table")
    assert sorted((r["voxels"][0], r["detected"][1]) for r in rows) == [("18", "no"), ("48", "yes")]
