"""Stand-ins for nnU-Net v2's three commands, to test how the experiment runner drives them.

Each is a small Python script that appends its arguments and nnU-Net folders to ``$FAKE_NNUNET_CALLS``
(JSON lines) and leaves what the real command leaves where the runner looks for it:

* ``nnUNetv2_plan_and_preprocess``: checks the export (``dataset.json``, ``splits_final.json``) and writes
  ``$nnUNet_preprocessed/DatasetNNN_*/nnUNetPlans.json`` and the split copy, as nnU-Net >= 2.5.1 does;
* ``nnUNetv2_train``: writes ``checkpoint_latest.pth``, then ``checkpoint_final.pth``, unless
  ``$FAKE_NNUNET_DIE`` names a file that does not exist yet: it is created, and the command exits 1 as a
  killed training would;
* ``nnUNetv2_predict``: a mask per ``-i`` case (PET channel ``_0001`` >= 2.5) in ``-o``, on the image's grid.

The real nnU-Net is exercised by ``tests/data/test_nnunet_integrity.py`` (with the extra) and by hand
(``docs/nnunet.md``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

_COMMON = """
import json, os, sys
from pathlib import Path

def record(name):
    with open(os.environ["FAKE_NNUNET_CALLS"], "a") as f:
        env = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        f.write(json.dumps({"command": name, "argv": sys.argv[1:], **env}) + "\\n")

def arg(flag, default=None):
    a = sys.argv[1:]
    return a[a.index(flag) + 1] if flag in a else default

def dataset(root, dataset_id):
    hits = sorted(Path(root).glob(f"Dataset{int(dataset_id):03d}_*"))
    if not hits:
        sys.exit(f"no dataset {dataset_id} in {root}")
    return hits[0]
"""

_PLAN = """
record("nnUNetv2_plan_and_preprocess")
raw = dataset(os.environ["nnUNet_raw"], arg("-d"))
for name in ("dataset.json", "splits_final.json"):
    if not (raw / name).is_file():
        sys.exit(f"{raw / name} missing")
pre = Path(os.environ["nnUNet_preprocessed"]) / raw.name
pre.mkdir(parents=True, exist_ok=True)
(pre / "nnUNetPlans.json").write_text("{}")
(pre / "splits_final.json").write_text((raw / "splits_final.json").read_text())
print("fake planning done")
"""

_TRAIN = """
record("nnUNetv2_train")
dataset_id, configuration, fold = sys.argv[1:4]
raw = dataset(os.environ["nnUNet_raw"], dataset_id)
if not (Path(os.environ["nnUNet_preprocessed"]) / raw.name / "nnUNetPlans.json").is_file():
    sys.exit("not preprocessed")
name = f"{arg('-tr', 'nnUNetTrainer')}__{arg('-p', 'nnUNetPlans')}__{configuration}"
out = Path(os.environ["nnUNet_results"]) / raw.name / name / f"fold_{fold}"
out.mkdir(parents=True, exist_ok=True)
(out / "checkpoint_latest.pth").write_text("latest")
die = os.environ.get("FAKE_NNUNET_DIE")
if die and not Path(die).exists():
    Path(die).write_text("died once")
    print("fake training killed")
    sys.exit(1)
(out / "checkpoint_final.pth").write_text("final")
print("fake training done")
"""

_PREDICT = """
record("nnUNetv2_predict")
import nibabel as nib
import numpy as np
src, dst = Path(arg("-i")), Path(arg("-o"))
dst.mkdir(parents=True, exist_ok=True)
for ct in sorted(src.glob("*_0000.nii.gz")):
    ident = ct.name[: -len("_0000.nii.gz")]
    pet = nib.load(str(src / f"{ident}_0001.nii.gz"))
    mask = (np.asarray(pet.dataobj) >= 2.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, pet.affine), str(dst / f"{ident}.nii.gz"))
print("fake prediction done")
"""

SCRIPTS = {
    "nnUNetv2_plan_and_preprocess": _PLAN,
    "nnUNetv2_train": _TRAIN,
    "nnUNetv2_predict": _PREDICT,
}


def write_fake_nnunet(folder: Path) -> Path:
    """The three fake commands in ``folder`` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in SCRIPTS.items():
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{_COMMON}\n{body}")
        os.chmod(path, 0o755)
    return folder


def read_calls(path: Path) -> list[dict[str, Any]]:
    """The recorded calls, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
