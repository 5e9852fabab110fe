"""`h2aseg.data.nnunet_export`: an nnU-Net v2 raw dataset from a phantom cohort (files, geometry, labels,
dataset.json, splits_final.json, identifiers), reruns that finish or skip, and the errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.config import DataConfig
from h2aseg.data.geometry import resample_to_grid
from h2aseg.data.io import ImageError, read_volume, write_volume
from h2aseg.data.layouts import Case, discover
from h2aseg.data.nnunet_export import (
    CASES_FILE,
    ExportError,
    dataset_folder_name,
    export_dataset,
    export_nnunet,
    load_case_map,
    nnunet_identifiers,
)
from h2aseg.data.preprocess import preprocess_case, restore_to_ct_grid
from h2aseg.data.splits import Split, make_split, save_split
from h2aseg.errors import InputError
from h2aseg.synth import write_cohort

SHAPE = (24, 24, 32)
SAFE = re.compile(r"[A-Za-z0-9_-]+")


@pytest.fixture(scope="module")
def autopet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("autopet")
    return root, write_cohort(root, 6, "autopet", seed=3, shape=SHAPE)


@pytest.fixture(scope="module")
def hecktor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("hecktor")
    return root, write_cohort(root, 5, "hecktor", seed=4, shape=SHAPE)


@pytest.fixture(scope="module")
def exported(autopet: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    export_dataset(DataConfig(root=str(autopet[0])), out, 501, "Phantom")
    return out / "Dataset501_Phantom"


def _json(path: Path) -> object:
    return json.loads(path.read_text())


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_dataset_json_and_identifiers(exported: Path, autopet: tuple[Path, list[Case]]) -> None:
    cases = {c.case_id: c for c in autopet[1]}
    doc = _json(exported / CASES_FILE)
    ids = load_case_map(exported)  # the folder or the file
    assert sorted(ids.values()) == sorted(cases)
    assert all(SAFE.fullmatch(i) for i in ids) and any(" " in c for c in cases)  # AutoPET ids have spaces
    ds = _json(exported / "dataset.json")
    assert ds["channel_names"] == {"0": "CT", "1": "PET"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "lesion": 1}
    training = [i for i, rec in doc["cases"].items() if rec["part"] != "test"]
    test = [i for i, rec in doc["cases"].items() if rec["part"] == "test"]
    assert ds["numTraining"] == len(training) and test
    assert sorted(p.name for p in (exported / "imagesTr").iterdir()) == sorted(
        f"{i}_{ch}.nii.gz" for i in training for ch in ("0000", "0001")
    )
    assert sorted(p.name for p in (exported / "labelsTr").iterdir()) == sorted(
        f"{i}.nii.gz" for i in training
    )
    assert sorted(p.name for p in (exported / "imagesTs").iterdir()) == sorted(
        f"{i}_{ch}.nii.gz" for i in test for ch in ("0000", "0001")
    )
    assert sorted(p.name for p in (exported / "labelsTs").iterdir()) == sorted(f"{i}.nii.gz" for i in test)
    rec = doc["cases"][test[0]]
    assert (
        rec["ct"] == str(cases[rec["case_id"]].ct) and rec["files"]["ct"] == f"imagesTs/{test[0]}_0000.nii.gz"
    )
    # h2aseg reads the export back as an nnU-Net layout: the train and val cases, CT first
    back = discover(exported, "autopet-nnunet")
    assert [c.case_id for c in back] == sorted(training)
    assert "nnUNetv2_train 501 3d_fullres 0" in (exported / "h2aseg_README.md").read_text()


def test_splits_final_is_h2aseg_train_split(exported: Path, autopet: tuple[Path, list[Case]]) -> None:
    ids = load_case_map(exported)
    (fold,) = _json(exported / "splits_final.json")
    split = make_split(autopet[1], (0.6, 0.2, 0.2), 12345)  # h2aseg train's defaults (synthetic preset)
    assert sorted(ids[i] for i in fold["train"]) == split.train
    assert sorted(ids[i] for i in fold["val"]) == split.val
    doc = _json(exported / CASES_FILE)
    parts: dict[str, set[str]] = {}
    for rec in doc["cases"].values():
        parts.setdefault(rec["patient_id"], set()).add(rec["part"])
    assert all(len(p) == 1 for p in parts.values())  # no patient in two parts
    assert any(len([r for r in doc["cases"].values() if r["patient_id"] == p]) > 1 for p in parts)


def test_geometry_and_values_same_grid(exported: Path, autopet: tuple[Path, list[Case]]) -> None:
    doc = _json(exported / CASES_FILE)
    for rec in doc["cases"].values():
        ct = read_volume(rec["ct"], dtype=None)
        files = {k: nib.load(exported / v) for k, v in rec["files"].items()}
        for img in files.values():
            assert img.shape == ct.shape and np.allclose(img.affine, ct.affine, atol=1e-5)
        assert np.array_equal(np.asanyarray(files["ct"].dataobj), ct.array)
        assert np.array_equal(files["pet"].get_fdata(dtype=np.float32), read_volume(rec["pet"]).array)
        lab = np.asanyarray(files["label"].dataobj)
        assert lab.dtype == np.uint8 and np.array_equal(lab, read_volume(rec["label"]).array > 0)


def test_pet_resampled_onto_ct_grid_and_multiclass(hecktor: tuple[Path, list[Case]], tmp_path: Path) -> None:
    data = DataConfig(root=str(hecktor[0]), label_mode="multiclass", num_label_classes=2)
    res = export_dataset(data, tmp_path, 12, "HNC")
    ds = _json(res.folder / "dataset.json")
    assert ds["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}
    seen: set[int] = set()
    for e in res.cases:
        ct, pet, lab = (read_volume(p, dtype=None) for p in (e.case.ct, e.case.pet, e.case.label))
        assert not pet.same_grid(ct)  # HECKTOR: PET on its own grid
        out = {k: read_volume(p, dtype=None) for k, p in e.targets(res.folder).items()}
        assert all(v.same_grid(ct, atol=1e-5) for v in out.values())
        expected = resample_to_grid(pet.array.astype(np.float32), pet.affine, ct.affine, ct.shape, order=1)
        assert np.allclose(out["pet"].array, expected, atol=1e-5)
        assert np.array_equal(out["label"].array, lab.array)  # classes kept
        seen |= set(np.unique(out["label"].array).tolist())
    assert seen == {0, 1, 2}
    # the PET channel is the SUV of h2aseg's own preprocessing, put back on the CT file's grid
    e = res.cases[0]
    pc = preprocess_case(e.case, data)
    suv = restore_to_ct_grid(pc.suv, pc.geometry, order=1)
    assert np.allclose(read_volume(e.targets(res.folder)["pet"]).array, suv, atol=1e-4)


def test_binary_merges_hecktor_classes(hecktor: tuple[Path, list[Case]], tmp_path: Path) -> None:
    res = export_dataset(DataConfig(root=str(hecktor[0]), num_label_classes=2), tmp_path, 13, "HNC")
    for e in res.cases:
        lab = read_volume(e.targets(res.folder)["label"], dtype=None).array
        assert np.array_equal(lab, read_volume(e.case.label).array > 0)


def test_rerun_skips_and_crash_is_finished(autopet: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root, cases = autopet
    before = _snapshot(root)
    data = DataConfig(root=str(root))

    class Killed(Exception):
        pass

    def die(done: int, total: int, identifier: str) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        export_dataset(data, tmp_path, 501, progress=die)
    folder = tmp_path / "Dataset501_H2ASeg"
    assert (folder / CASES_FILE).is_file() and not (folder / "dataset.json").exists()
    (folder / "imagesTr" / ".tmp-x_0000.nii.gz.abc.nii.gz").write_bytes(b"half")  # a killed atomic write
    res = export_dataset(data, tmp_path, 501)
    assert res.skipped == 6 and res.written == 3 * len(cases) - 6
    assert (folder / "dataset.json").is_file() and not list(folder.rglob(".tmp-*"))
    done = _snapshot(folder / "imagesTr")
    again = export_dataset(data, tmp_path, 501)
    assert (again.written, again.skipped) == (0, 3 * len(cases))
    assert _snapshot(folder / "imagesTr") == done
    # a source file replaced since: that case is written again
    e = next(x for x in res.cases if x.part == "train")
    os.utime(e.case.pet, ns=(e.case.pet.stat().st_atime_ns, e.case.pet.stat().st_mtime_ns + 10**9))
    before[str(e.case.pet)] = (e.case.pet.stat().st_size, e.case.pet.stat().st_mtime_ns)
    assert export_dataset(data, tmp_path, 501).written == 3
    assert _snapshot(root) == before  # the input is never written


def test_other_dataset_refused_unless_force(autopet: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root = autopet[0]
    export_dataset(DataConfig(root=str(root)), tmp_path, 501)
    other = DataConfig(root=str(root), split_seed=7)
    with pytest.raises(
        ExportError, match=r"Dataset501_H2ASeg: holds another dataset \(a different .*--force"
    ):
        export_dataset(other, tmp_path, 501)
    res = export_dataset(other, tmp_path, 501, force=True)
    assert res.written == 3 * len(autopet[1])
    foreign = tmp_path / "Dataset502_H2ASeg"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(ExportError, match="not an export of h2aseg"):
        export_dataset(other, tmp_path, 502)
    (tmp_path / "Dataset503_Other").mkdir()
    with pytest.raises(ExportError, match="Dataset503_Other already uses dataset id 503"):
        export_dataset(other, tmp_path, 503)
    with pytest.raises(ExportError, match="inside the input dataset"):
        export_dataset(other, root, 504)
    assert not (root / "Dataset504_H2ASeg").exists()


def test_split_file_and_preprocessed_copy(autopet: tuple[Path, list[Case]], tmp_path: Path) -> None:
    root, cases = autopet
    split = make_split(cases, (0.5, 0.25, 0.25), 99)
    save_split(split, tmp_path / "split.json")
    data = DataConfig(root=str(root), split_file=str(tmp_path / "split.json"))
    res = export_dataset(data, tmp_path / "raw", 9, preprocessed=tmp_path / "pre")
    copy = tmp_path / "pre" / "Dataset009_H2ASeg" / "splits_final.json"
    assert res.splits == [res.folder / "splits_final.json", copy]
    assert copy.read_text() == (res.folder / "splits_final.json").read_text()
    ids = load_case_map(res.folder)
    assert sorted(ids[i] for i in _json(copy)[0]["val"]) == split.val
    copy.write_text("[]")
    with pytest.raises(ExportError, match="holds a different split"):
        export_dataset(data, tmp_path / "raw", 9, preprocessed=tmp_path / "pre")
    bad = Split([cases[0].case_id], [], ["nope"], 0)
    save_split(bad, tmp_path / "bad.json")
    with pytest.raises(ExportError, match=r"bad\.json: .*nope"):
        export_dataset(DataConfig(root=str(root), split_file=str(tmp_path / "bad.json")), tmp_path / "r2", 9)


def test_identifiers_are_safe_unique_and_stable() -> None:
    ids = nnunet_identifiers(["P 1_a  b", "a b", "a_b", "x/y", "ok-1"])
    assert ids["P 1_a  b"] == "P_1_a_b" and ids["ok-1"] == "ok-1" and ids["x/y"] == "x_y"
    assert ids["a b"] != ids["a_b"] and ids["a b"].startswith("a_b-") and len(set(ids.values())) == 5
    assert nnunet_identifiers(["a_b", "a b"]) == {"a_b": ids["a_b"], "a b": ids["a b"]}
    assert dataset_folder_name(7, "AutoPET-II") == "Dataset007_AutoPET-II"
    for bad in [(0, "x"), (1000, "x"), (5, "my data"), (5, "")]:
        with pytest.raises(ExportError):
            dataset_folder_name(*bad)


def _manifest(folder: Path, rows: list[tuple[str, Path, Path, Path | None]]) -> Path:
    lines = ["case_id,patient_id,ct,pet,label"] + [
        f"{cid},{cid},{ct},{pet},{'' if lab is None else lab}" for cid, ct, pet, lab in rows
    ]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_input_errors_name_the_file(autopet: tuple[Path, list[Case]], tmp_path: Path) -> None:
    cases = autopet[1]
    good = [(f"c{i}", c.ct, c.pet, c.label) for i, c in enumerate(cases[:4])]
    lab = read_volume(cases[0].label, dtype=None)
    bad_values = tmp_path / "bad_values.nii.gz"
    write_volume(bad_values, np.full(lab.shape, 3, np.uint8), lab.affine)
    moved = read_volume(cases[0].pet)
    far = tmp_path / "far_pet.nii.gz"
    write_volume(
        far, moved.array, moved.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1e4], [0, 0, 0, 1]])
    )
    other_grid = tmp_path / "other_grid.nii.gz"
    write_volume(other_grid, lab.array[:-2], lab.affine)
    for i, (row, message) in enumerate(
        [
            (("bad", cases[0].ct, cases[0].pet, bad_values), r"bad_values\.nii\.gz: label values \{3\}"),
            (("far", cases[0].ct, far, cases[0].label), r"far_pet\.nii\.gz: PET does not overlap"),
            (("grid", cases[0].ct, cases[0].pet, other_grid), r"other_grid\.nii\.gz: label grid"),
        ]
    ):
        d = tmp_path / f"m{i}"
        d.mkdir()
        data = DataConfig(root=str(_manifest(d, [*good, row])), split_ratios=(1 / 3, 1 / 3, 1 / 3))
        cases_here = discover(data.root)
        split = Split(["c0", "c1", row[0]], ["c2"], ["c3"], 0)
        with pytest.raises(ImageError, match=message) as info:
            export_nnunet(cases_here, split, tmp_path / f"out{i}", 5)
        assert isinstance(info.value, InputError)
    d = tmp_path / "unlabelled"
    d.mkdir()
    unl = discover(_manifest(d, [*good, ("nolab", cases[0].ct, cases[0].pet, None)]))
    with pytest.raises(ExportError, match=r"1 train/val case.*no label file.*nolab"):
        export_nnunet(unl, Split(["c0", "nolab"], ["c1"], [], 0), tmp_path / "o", 5)
    with pytest.raises(ExportError, match="no val cases"):
        export_nnunet(unl[:4], Split(["c0", "c1"], [], ["c2", "c3"], 0), tmp_path / "o", 5)
    (tmp_path / "junk.json").write_text('{"cases": [1]}')
    for path in (tmp_path / "missing.json", tmp_path / "junk.json"):
        with pytest.raises(ExportError, match=re.escape(path.name)):
            load_case_map(path)
