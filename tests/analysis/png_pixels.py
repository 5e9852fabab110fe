"""Reading figures back for the analysis tests: where the panels are, and which pixels have a colour."""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # top, bottom, left, right (pixels; bottom and right exclusive)


def panel_boxes(img: np.ndarray) -> list[Box]:
    """The inside of each panel's black frame (the axes spines), left to right, of an RGB(A) float image.

    Frame lines are the rows and columns whose dark pixels cover most of the image's longest dark run; the
    panels must share one row (one top and one bottom line)."""
    dark = img[..., :3].max(axis=-1) < 0.2
    cols, rows = dark.sum(axis=0), dark.sum(axis=1)

    def lines(counts: np.ndarray) -> list[tuple[int, int]]:  # runs of frame lines: (first, last)
        idx = np.flatnonzero(counts > 0.6 * counts.max())
        runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        return [(int(r[0]), int(r[-1])) for r in runs]

    horizontal, vertical = lines(rows), lines(cols)
    assert len(horizontal) == 2 and len(vertical) % 2 == 0, (horizontal, vertical)
    (_, top), (bottom, _) = horizontal
    return [(top + 1, bottom, vertical[i][1] + 1, vertical[i + 1][0]) for i in range(0, len(vertical), 2)]


def crop(a: np.ndarray, box: Box) -> np.ndarray:
    """The part of an image (or of a mask) inside ``box``."""
    top, bottom, left, right = box
    return a[top:bottom, left:right]


def middle(box: Box, rows: tuple[float, float], cols: tuple[float, float]) -> Box:
    """The part of ``box`` between the fractions ``rows`` of its height and ``cols`` of its width."""
    top, bottom, left, right = box
    h, w = bottom - top, right - left
    return top + int(rows[0] * h), top + int(rows[1] * h), left + int(cols[0] * w), left + int(cols[1] * w)


def coloured(img: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.12) -> np.ndarray:
    """Bool mask of the pixels within ``tol`` (per channel, 0-1 scale) of the 0-255 colour ``rgb``."""
    return (np.abs(img[..., :3] - np.array(rgb) / 255.0) < tol).all(axis=-1)
