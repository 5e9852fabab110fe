"""What the MONAI adapters share: the fixed input layout and the input-size checks with clear messages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

IN_CHANNELS = 2  # channel 0 = CT, channel 1 = PET
SPATIAL_DIMS = 3


def fixed_layout(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without ``in_channels``/``spatial_dims``, which may only repeat the fixed 2 and 3."""
    kwargs = dict(kwargs)
    for key, fixed in (("in_channels", IN_CHANNELS), ("spatial_dims", SPATIAL_DIMS)):
        if key in kwargs and kwargs.pop(key) != fixed:
            raise ValueError(
                f"{name}: {key} is fixed at {fixed} (inputs are (B, 2, X, Y, Z): channel 0 CT, channel 1 PET)"
            )
    return kwargs


def as_triple(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    """An int repeated three times, or a sequence of three ints."""
    vals = [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]
    if len(vals) != 3:
        raise ValueError(f"{what} must be an int or 3 ints, got {value!r}")
    return vals[0], vals[1], vals[2]


def stride_divisor(strides: Sequence[int | Sequence[int]]) -> tuple[int, int, int]:
    """Per-axis product of the downsampling strides: what every input size must be divisible by."""
    div = [1, 1, 1]
    for s in strides:
        for axis, v in enumerate(as_triple(s, "stride")):
            div[axis] *= v
    return div[0], div[1], div[2]


def round_up(size: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    """Each size rounded up to a positive multiple of its divisor (a size that would work)."""
    return tuple(max(d, math.ceil(s / d) * d) for s, d in zip(size, divisor, strict=True))


def divisibility_error(
    name: str, what: str, size: Sequence[int], divisor: Sequence[int]
) -> ValueError | None:
    """A ``ValueError`` naming ``size`` and the next size that works, or ``None`` when it divides."""
    size = tuple(int(s) for s in size)
    if all(s > 0 and s % d == 0 for s, d in zip(size, divisor, strict=True)):
        return None
    div = divisor[0] if len(set(divisor)) == 1 else tuple(divisor)
    return ValueError(
        f"{name}: {what} {size} is not divisible by {div} in every dimension; "
        f"use e.g. {round_up(size, divisor)} (pad the volume, or set data.patch_size / infer.roi_size)"
    )


def check_input(name: str, x: torch.Tensor, divisor: Sequence[int]) -> None:
    """Raise a ``ValueError`` unless ``x`` is ``(B, 2, X, Y, Z)`` with each size divisible by ``divisor``."""
    if x.ndim != 5 or x.shape[1] != IN_CHANNELS:
        raise ValueError(
            f"{name}: expected input (B, 2, X, Y, Z) (channel 0 CT, channel 1 PET), got {tuple(x.shape)}"
        )
    err = divisibility_error(name, "input spatial size", x.shape[2:], divisor)
    if err is not None:
        raise err


def is_instance_norm(norm: Any) -> bool:
    """Whether a MONAI norm spec (``"instance"`` or ``("instance", {...})``) names instance norm."""
    name = norm[0] if isinstance(norm, tuple | list) and norm else norm
    return isinstance(name, str) and name.lower().startswith("instance")


def check_deepest_level(name: str, size: Sequence[int], divisor: Sequence[int]) -> None:
    """Raise a ``ValueError`` when the deepest level of an input is one voxel (instance norm's statistics
    need more than one, in training and in evaluation); ``size`` is already divisible by ``divisor``."""
    size = tuple(int(s) for s in size)
    if all(s <= d for s, d in zip(size, divisor, strict=True)):
        bigger = (2 * divisor[0], *size[1:])
        raise ValueError(
            f"{name}: input spatial size {size} is too small: the deepest level would be 1x1x1, "
            f"which instance norm cannot normalise; use e.g. {bigger}"
        )


def check_sized_input(name: str, x: torch.Tensor, divisor: Sequence[int], deepest_level: bool) -> None:
    """:func:`check_input`, then :func:`check_deepest_level` when ``deepest_level`` (instance norm in use)."""
    check_input(name, x, divisor)
    if deepest_level:
        check_deepest_level(name, x.shape[2:], divisor)
