"""The body's own frame: its centre, its left-right midline, and position in it as input channels.

Ours, for step (e) of the MCSA study (docs/results.md). MCSA has no positional encoding: between windows it
attends by content alone, so it cannot ask for "the voxel at my mirror image across the body", which is
what tells an unlabelled symmetric decoy from a node lesion on a cohort written with ``h2aseg synth
--symmetric-decoys``. ``data.body_coords`` gives both of H2ASeg's branches three channels that locate each
voxel in the body, computed on the whole volume before any crop:

- ``body_dx``: the **unsigned** left-right distance to the body's midline, ``|x - m_x|`` (unsigned, so that
  a voxel and its mirror image share it, whatever flips the augmentation applies);
- ``body_dy``, ``body_dz``: the anterior-posterior and cranio-caudal offsets from the body's centre,
  ``y - m_y`` and ``z - m_z`` (a voxel and its mirror image share both);

each in units of ``unit_mm`` millimetres of the working grid (``spacing``; ``data.body_coords_unit_mm``,
default 100). A voxel and its mirror partner then carry equal
coordinates and other voxels different ones, which dot-product attention can match (``-(a - b)^2`` expands
into terms of the query alone, the key alone and their product). The augmentation moves the channels with
the image (crops, rotations and flips keep each voxel's coordinates), and its intensity jitter scales and
shifts them as it does every channel (one draw per channel and crop: equal values stay equal in a crop).

The centre is the mean index of the body's voxels (CT channel above the body threshold, as for the
training crop) along each axis; :func:`body_midline` is its left-right part (also the mirror of
:mod:`h2aseg.data.mirror`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy import ndimage

#: millimetres per unit of the coordinate channels, by default
UNIT_MM = 100.0


def body_centre(ct: torch.Tensor, threshold: float) -> tuple[float, float, float]:
    """The mean index along each axis of the voxels of ``ct`` ``(X, Y, Z)`` above ``threshold`` (SciPy's
    centre of mass of the body mask; the volume's centre when no voxel is above)."""
    if ct.ndim != 3:
        raise ValueError(f"expected a CT volume (X, Y, Z), got {tuple(ct.shape)}")
    body = (ct > threshold).cpu().numpy()
    if not body.any():
        return (ct.shape[0] - 1) / 2, (ct.shape[1] - 1) / 2, (ct.shape[2] - 1) / 2
    x, y, z = ndimage.center_of_mass(body)
    return float(x), float(y), float(z)


def body_midline(ct: torch.Tensor, threshold: float) -> float:
    """The body's left-right midline: the mean index along axis 0 (RAS: left-right) of the voxels of
    ``ct`` ``(X, Y, Z)`` above ``threshold`` (the volume's centre when none is)."""
    return body_centre(ct, threshold)[0]


def body_coordinates(
    shape: Sequence[int], centre: Sequence[float], spacing: Sequence[float], unit_mm: float = UNIT_MM
) -> torch.Tensor:
    """float32 ``(3, X, Y, Z)``: ``|x - c_x|``, ``y - c_y``, ``z - c_z`` in units of ``unit_mm`` for a grid
    of ``shape`` voxels of ``spacing`` mm whose body centre is at index ``centre``."""
    if len(shape) != 3 or len(centre) != 3 or len(spacing) != 3:
        raise ValueError(f"expected 3-D shape, centre and spacing, got {shape}, {centre}, {spacing}")
    if any(float(s) <= 0 for s in spacing):
        raise ValueError(f"voxel spacing must be positive, got {tuple(spacing)}")
    if unit_mm <= 0:
        raise ValueError(f"the coordinates' unit must be positive, got {unit_mm} mm")
    axes = [
        (torch.arange(n, dtype=torch.float64) - c) * (float(s) / unit_mm)
        for n, c, s in zip(shape, centre, spacing, strict=True)
    ]
    axes[0] = axes[0].abs()
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids).to(torch.float32)


def with_body_coordinates(
    image: torch.Tensor, body_threshold: float, spacing: Sequence[float], unit_mm: float = UNIT_MM
) -> torch.Tensor:
    """``image`` ``(C, X, Y, Z)`` (channel 0 the CT) with :func:`body_coordinates` appended:
    ``(C + 3, X, Y, Z)``."""
    if image.ndim != 4 or image.shape[0] < 2:
        raise ValueError(f"expected image (C, X, Y, Z) with CT first and C >= 2, got {tuple(image.shape)}")
    centre = body_centre(image[0], body_threshold)
    coords = body_coordinates(image.shape[1:], centre, spacing, unit_mm).to(image.dtype)
    return torch.cat([image, coords], dim=0)
