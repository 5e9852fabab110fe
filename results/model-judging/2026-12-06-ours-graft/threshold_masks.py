"""Masks at other foreground thresholds from the probability maps `h2aseg predict --set
infer.save_probabilities=true` wrote (studies on their working grid, so the map and the mask share a grid):
mask = probability >= T, as `infer.threshold=T` would give. Checks T=0.5 reproduces the written masks."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

src = Path(sys.argv[1])
for prob_path in sorted(src.glob("*_probability.nii.gz")):
    case = prob_path.name[: -len("_probability.nii.gz")]
    img = nib.load(prob_path)
    prob = np.asarray(img.dataobj, dtype=np.float32)
    mask = nib.load(src / f"{case}.nii.gz")
    assert np.array_equal(np.asarray(mask.dataobj) > 0, prob >= 0.5), case
    for t in sys.argv[2:]:
        out = Path(f"pred-val-t{t}")
        out.mkdir(exist_ok=True)
        m = (prob >= float(t)).astype(np.uint8)
        nib.save(nib.Nifti1Image(m, mask.affine, mask.header), out / f"{case}.nii.gz")
print("ok")
