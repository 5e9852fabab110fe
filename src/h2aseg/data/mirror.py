"""The PET mirrored across the body's left-right midline, as a third input channel (``data.mirror_pet``).

Ours, a control for step (e) of the MCSA study (docs/results.md): on a cohort written with ``h2aseg synth
--symmetric-decoys``, only the other side of the body tells an unlabelled decoy from a node lesion. This
channel brings that side to every voxel (at voxel ``x`` the PET at ``2m - x``, ``m`` the body's midline), so
that a network of 3x3x3 convolutions can read the cue where it looks. Whether a network then learns to
reject the decoys says whether the cue is learnable in the schedule at all, which is what a network that
must find it across the body (MCSA) is judged against. H2ASeg's PET branch takes the PET and its mirror
image as two channels (``in_channels=3``).

The midline is the mean left-right (axis 0 of the RAS working grid) index of the body's voxels (CT channel
above the body threshold, as for the training crop; :func:`h2aseg.data.body_frame.body_midline`), over the
whole volume, so it is computed before any crop; mirroring moves voxels by whole steps (no
interpolation) and fills what comes from outside the volume with 0 (no uptake).
"""

from __future__ import annotations

import torch

from h2aseg.data.body_frame import body_midline

#: the image channels the networks take: CT, PET, and with ``data.mirror_pet`` the mirrored PET
CT, PET, MIRRORED_PET = 0, 1, 2


def mirror_across(volume: torch.Tensor, midline: float) -> torch.Tensor:
    """``volume`` ``(X, ...)`` reflected about index ``midline`` of axis 0: ``out[x] = volume[2m - x]``
    (``2m`` rounded to a whole index), 0 where ``2m - x`` lies outside the volume."""
    n = volume.shape[0]
    shift = round(2 * midline) - (n - 1)  # out[x] = flipped[x - shift]
    flipped = torch.flip(volume, dims=(0,))
    out = torch.zeros_like(volume)
    if abs(shift) >= n:
        return out
    if shift >= 0:
        out[shift:] = flipped[: n - shift]
    else:
        out[: n + shift] = flipped[-shift:]
    return out


def with_mirrored_pet(image: torch.Tensor, body_threshold: float) -> torch.Tensor:
    """``image`` ``(2, X, Y, Z)`` [CT, PET] with the PET mirrored across the body's midline appended:
    ``(3, X, Y, Z)`` [CT, PET, mirrored PET]."""
    if image.ndim != 4 or image.shape[0] != 2:
        raise ValueError(f"expected image (2, X, Y, Z) with CT then PET, got {tuple(image.shape)}")
    midline = body_midline(image[CT], body_threshold)
    return torch.cat([image, mirror_across(image[PET], midline)[None]], dim=0)
