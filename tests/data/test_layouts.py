"""Dataset discovery on trees written by the phantom, and every malformed-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from h2aseg.data.layouts import (
    Case,
    CasePaths,
    LayoutError,
    autopet_case_id,
    autopet_study_paths,
    csv_case_paths,
    detect_layout,
    discover,
    hecktor_case_id,
    hecktor_case_paths,
    manifest_text,
    nnunet_case_id,
    nnunet_case_paths,
    nnunet_patient_id,
    write_manifest,
)
from h2aseg.synth import write_cohort

SHAPE = (20, 20, 24)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in ("autopet", "autopet-nnunet", "hecktor", "csv"):
        root = base / layout
        out[layout] = (root, write_cohort(root, 5, layout, seed=3, shape=SHAPE))
    return out


def _copy(trees: dict, layout: str, tmp_path: Path) -> Path:
    dst = tmp_path / layout
    shutil.copytree(trees[layout][0], dst)
    return dst


@pytest.mark.parametrize("layout", ["autopet", "autopet-nnunet", "hecktor", "csv"])
def test_discover_finds_written_cases(trees: dict, layout: str) -> None:
    root, written = trees[layout]
    assert detect_layout(root) == layout
    for how in ("auto", layout):
        cases = discover(root, how)
        assert cases == written
        assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
        for c in cases:
            assert c.ct.is_file() and c.pet.is_file() and c.label is not None and c.label.is_file()
            assert c.ct != c.pet


def test_autopet_layouts_group_studies_by_patient(trees: dict) -> None:
    tcia = discover(trees["autopet"][0])
    nnu = discover(trees["autopet-nnunet"][0])
    assert len({c.patient_id for c in tcia}) < len(tcia)  # some patient has several studies
    for a, b in zip(tcia, nnu, strict=True):
        assert a.patient_id == f"PETCT_{b.patient_id}"
        assert a.ct.name == "CTres.nii.gz" and a.pet.name == "SUV.nii.gz" and a.label.name == "SEG.nii.gz"
        assert b.ct.name.endswith("_0000.nii.gz") and b.pet.name.endswith("_0001.nii.gz")
        assert b.case_id.startswith("fdg_") and "  " in b.case_id  # real study names, double space included


def test_hecktor_names(trees: dict) -> None:
    cases = discover(trees["hecktor"][0], "hecktor")
    for c in cases:
        assert c.ct.name == f"{c.case_id}__CT.nii.gz" and c.pet.name == f"{c.case_id}__PT.nii.gz"
        assert c.patient_id == c.case_id and c.case_id[:3] in ("CHU", "MDA", "HGJ", "HMR")


def test_swap_channels(trees: dict) -> None:
    root = trees["autopet-nnunet"][0]
    normal = discover(root, "autopet-nnunet")
    swapped = discover(root, "autopet-nnunet", swap_channels=True)
    for a, b in zip(normal, swapped, strict=True):
        assert (a.ct, a.pet) == (b.pet, b.ct)


def test_nnunet_patient_id() -> None:
    assert (
        nnunet_patient_id("fdg_2ce074c2ea_02-04-2006-NA-PET-CT Ganzkoerper  primaer mit KM-43376")
        == "2ce074c2ea"
    )
    assert nnunet_patient_id("psma_95b833d46f153cd2_2017-11-18") == "95b833d46f153cd2"
    assert nnunet_patient_id("PETCT_0af7ffe12a_08-12-2005-NA-PET-CT") == "PETCT_0af7ffe12a"
    assert nnunet_patient_id("case7") == "case7"


def test_unlabelled_nnunet_tree(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "autopet-nnunet", tmp_path)
    shutil.rmtree(root / "labelsTr")
    assert all(c.label is None for c in discover(root))


def test_missing_pet_names_the_file(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "autopet", tmp_path)
    victim = discover(root)[1].pet
    victim.unlink()
    with pytest.raises(LayoutError, match="missing") as e:
        discover(root, "autopet")
    assert str(victim) in str(e.value)


def test_missing_label_names_the_file(trees: dict, tmp_path: Path) -> None:
    for layout in ("autopet-nnunet", "hecktor", "autopet"):
        root = _copy(trees, layout, tmp_path)
        victim = discover(root)[0].label
        victim.unlink()
        with pytest.raises(LayoutError) as e:
            discover(root, layout)
        assert str(victim) in str(e.value)


def test_missing_ct_hecktor(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "hecktor", tmp_path)
    victim = discover(root)[2].ct
    victim.unlink()
    with pytest.raises(LayoutError) as e:
        discover(root)
    assert str(victim) in str(e.value)


def test_duplicate_ids(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "autopet-nnunet", tmp_path)
    ct = discover(root)[0].ct
    shutil.copy(ct, ct.with_name(ct.name.replace(".nii.gz", ".nii")))
    with pytest.raises(LayoutError, match="duplicate case id"):
        discover(root)
    csv_root = _copy(trees, "csv", tmp_path)
    manifest = csv_root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(LayoutError, match=r"duplicate case id.*case_0000"):
        discover(manifest)


def test_empty_and_unrecognised_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=f"{empty}: folder is empty"):
        discover(empty)
    with pytest.raises(LayoutError, match="folder is empty"):
        discover(empty, "hecktor")
    odd = tmp_path / "odd"
    (odd / "sub").mkdir(parents=True)
    (odd / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match=f"{odd}: unrecognised dataset layout"):
        discover(odd)
    with pytest.raises(LayoutError, match="no such file"):
        discover(tmp_path / "nowhere")
    with pytest.raises(LayoutError, match="unknown layout 'brats'"):
        discover(odd, "brats")
    with pytest.raises(LayoutError, match="no imagesTr"):
        discover(odd, "autopet-nnunet")


def test_bad_image_names(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "hecktor", tmp_path)
    (root / "imagesTr" / "CHUM-999_CT.nii.gz").write_bytes(b"")
    with pytest.raises(LayoutError, match=r"CHUM-999_CT\.nii\.gz: not a HECKTOR image name"):
        discover(root, "hecktor")


def test_csv_manifest(trees: dict, tmp_path: Path) -> None:
    root = _copy(trees, "csv", tmp_path)
    cases = discover(root / "manifest.csv")
    assert cases == discover(root)  # folder with exactly one .csv
    assert all(c.ct.is_absolute() and c.ct.is_file() for c in cases)  # relative paths resolved
    # optional label column and empty patient id
    m2 = tmp_path / "other.csv"
    m2.write_text(f"case_id,patient_id,ct,pet\nx,,{cases[0].ct},{cases[0].pet}\n")
    (c,) = discover(m2)
    assert c.label is None and c.patient_id == "x"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,ct\nx,y\n")
    with pytest.raises(LayoutError, match=r"bad.csv: missing column\(s\) case_id, pet"):
        discover(bad)
    gone = tmp_path / "gone.csv"
    gone.write_text("case_id,ct,pet\nx,missing_ct.nii.gz,missing_pet.nii.gz\n")
    with pytest.raises(LayoutError, match=r"missing_ct\.nii\.gz") as e:
        discover(gone)
    assert str(tmp_path / "missing_pet.nii.gz") in str(e.value)
    (root / "second.csv").write_text("case_id,ct,pet\n")
    with pytest.raises(LayoutError, match=r"exactly one manifest \.csv, found 2"):
        discover(root, "csv")


def _touch(root: Path, paths: CasePaths) -> CasePaths:
    for q in paths:
        (root / q).parent.mkdir(parents=True, exist_ok=True)
        (root / q).touch()
    return CasePaths(*(root / q for q in paths))


def test_name_builders_round_trip(tmp_path: Path) -> None:
    """Names built by the builders are discovered back with the right ids, patients and files."""
    study = "01-02-2003-NA-PET-CT Ganzkoerper  primaer mit KM-12345"
    expected: dict[str, list[Case]] = {}
    for layout in ("autopet", "autopet-nnunet", "hecktor", "csv"):
        root = tmp_path / layout
        cases = []
        for i, pat in enumerate(("0af3c91b2d", "77e0b4a1c9")):
            for s in (study, study.replace("01-02", f"1{i}-03")):
                if layout == "autopet":
                    pid = f"PETCT_{pat}"
                    paths, cid = _touch(root, autopet_study_paths(pid, s)), autopet_case_id(pid, s)
                elif layout == "autopet-nnunet":
                    cid = nnunet_case_id("fdg", pat, s)
                    pid, paths = pat, _touch(root, nnunet_case_paths(cid))
                elif layout == "hecktor":
                    cid = pid = hecktor_case_id(("CHUM", "MDA")[i], 1 + len(cases))
                    paths = _touch(root, hecktor_case_paths(cid))
                else:
                    cid, pid = f"case {len(cases)}", f"patient-{i}"
                    paths = _touch(root, csv_case_paths(cid))
                cases.append(Case(cid, pid, *paths))
        if layout == "csv":
            (root / "manifest.csv").write_text(manifest_text(cases, root))
        expected[layout] = sorted(cases, key=lambda c: c.case_id)
        assert detect_layout(root) == layout
        assert discover(root) == discover(root, layout) == expected[layout]
    assert [c.case_id[:4] for c in expected["hecktor"]] == ["CHUM", "CHUM", "MDA-", "MDA-"]
    assert expected["hecktor"][0].case_id == "CHUM-001"
    tcia, nnu = expected["autopet"], expected["autopet-nnunet"]
    assert [c.case_id for c in tcia] == [f"PETCT_{c.case_id[4:]}" for c in nnu]


def test_write_manifest_has_absolute_paths_and_reads_back(tmp_path: Path, monkeypatch) -> None:
    """Without a base the manifest lists absolute paths (a label may be missing), is written atomically (no
    temporary file left) and ``discover`` reads the same cases back from anywhere."""
    root = tmp_path / "data"
    a = Case("a, 1", "p1", *_touch(root, csv_case_paths("a")))
    ct, pet, _ = _touch(root, csv_case_paths("b"))
    b = Case("b", "p2", ct, pet, None)
    monkeypatch.chdir(root)
    relative = Case("b", "p2", ct.relative_to(root), pet.relative_to(root), None)
    out = write_manifest([a, relative], tmp_path / "lists" / "cases.csv")
    assert out == tmp_path / "lists" / "cases.csv" and [p.name for p in out.parent.iterdir()] == ["cases.csv"]
    lines = out.read_text().splitlines()
    assert lines[0] == "case_id,patient_id,ct,pet,label"
    assert lines[2] == f"b,p2,{ct},{pet}," and lines[1].startswith('"a, 1",p1,/')
    assert discover(out, "csv") == [a, b]
