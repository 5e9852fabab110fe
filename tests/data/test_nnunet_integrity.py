"""nnU-Net v2 itself accepts an export: ``verify_dataset_integrity`` (what ``nnUNetv2_plan_and_preprocess
--verify_dataset_integrity`` runs first) passes without geometry warnings, and nnU-Net lists the train/val
cases with CT as channel 0000 and PET as 0001. Needs the ``nnunet`` extra; skipped without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from h2aseg.config import DataConfig
from h2aseg.data.nnunet_export import export_dataset, load_case_map
from h2aseg.synth import write_cohort

pytest.importorskip(
    "nnunetv2",
    reason="nnunetv2 is not installed: pip install -e '.[nnunet]' (docs/nnunet.md) to run this test",
)

# in a child process: nnunetv2 reads nnUNet_raw & co. when imported and checks cases in a process pool
SCRIPT = """
import json, sys
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
found = {}
for folder in sys.argv[1:]:
    verify_dataset_integrity(folder, 1)
    cases = get_filenames_of_train_images_and_targets(folder)
    found[folder] = {k: v["images"] + [v["label"]] for k, v in cases.items()}
print("FOUND " + json.dumps(found))
"""


def test_nnunet_verifies_the_export(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folders = []
    for n, (layout, data) in enumerate(
        [("autopet", {}), ("hecktor", {"label_mode": "multiclass", "num_label_classes": 2})], start=1
    ):
        root = tmp_path / layout
        write_cohort(root, 5, layout, seed=n, shape=(24, 24, 32))
        folders.append(export_dataset(DataConfig(root=str(root), **data), raw, 600 + n, layout).folder)
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(tmp_path / "pre"),
        "nnUNet_results": str(tmp_path / "results"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "mismatch" not in log.lower() and "Error" not in proc.stdout, log
    found = json.loads(log.split("FOUND ", 1)[1].splitlines()[0])
    for folder in folders:
        doc = json.loads((folder / "h2aseg_cases.json").read_text())
        training = {i for i, rec in doc["cases"].items() if rec["part"] != "test"}
        assert set(found[str(folder)]) == training and set(load_case_map(folder)) >= training
        for ident, (ct, pet, label) in found[str(folder)].items():
            assert (Path(ct).name, Path(pet).name) == (f"{ident}_0000.nii.gz", f"{ident}_0001.nii.gz")
            assert Path(label) == folder / doc["cases"][ident]["files"]["label"]
