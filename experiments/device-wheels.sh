#!/usr/bin/env bash
# Fetch the wheels that a lent GPU machine lacks for h2aseg's experiments into .whl/ (ignored by git), on a
# machine where pip reaches a package index. The GPU machine's image has Python 3.12 with PyTorch, NumPy,
# SciPy, matplotlib, typer, rich, PyYAML, einops and TensorBoard, but not MONAI, nibabel, pydicom or cc3d,
# and it reaches no index; experiments/device-queue.sh installs what is here there.
#
#   experiments/device-wheels.sh [DEST]      # default .whl; prints what it holds and its size
#
# The wheels travel with the working tree, whose limit is 64 MiB (tracked files about 28 MiB today): these
# four are about 13 MiB. nnU-Net (nnunetv2 with SimpleITK, 29 MiB even as an xz archive, and eleven more
# packages) does not fit beside them: its Table 1 rows wait for a machine that can install it.
set -euo pipefail

dest="${1:-.whl}"
mkdir -p "$dest"
# the versions the CPU test environment runs (pip freeze in .venv); pure-Python wheels but cc3d's
wheels=(monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 connected-components-3d==4.1.1)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
ls -l "$dest"
du -sh "$dest"
