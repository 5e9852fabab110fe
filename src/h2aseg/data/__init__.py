"""PET/CT data: dataset layouts, image I/O and checks, preprocessing and caching, splits.

The MONAI training pipelines live in :mod:`h2aseg.data.transforms` (not imported here, to keep this package
light: it pulls in torch and MONAI). The synthetic phantom is :mod:`h2aseg.synth` (it uses this package;
this package does not import it).
"""

from h2aseg.data.io import ImageError, Volume, read_volume, write_volume
from h2aseg.data.layouts import Case, LayoutError, discover
from h2aseg.data.preprocess import (
    CaseCache,
    CaseGeometry,
    PreprocessedCase,
    preprocess_case,
    preprocess_images,
    restore_to_ct_grid,
)
from h2aseg.data.splits import Split, SplitError, load_split, make_split, save_split

__all__ = [
    "Case",
    "CaseCache",
    "CaseGeometry",
    "ImageError",
    "LayoutError",
    "PreprocessedCase",
    "Split",
    "SplitError",
    "Volume",
    "discover",
    "load_split",
    "make_split",
    "preprocess_case",
    "preprocess_images",
    "read_volume",
    "restore_to_ct_grid",
    "save_split",
    "write_volume",
]
