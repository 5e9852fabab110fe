"""Fig.-3 style overlays: exact colour coding, default slice, aspect ratio, PNG written atomically."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from png_pixels import panel_boxes

from h2aseg.analysis.overlays import (
    FN_COLOUR,
    FP_COLOUR,
    TP_COLOUR,
    comparison_rgba,
    coronal_pet_mip,
    mip,
    render_overlay,
)
from h2aseg.analysis.plotting import default_slice

matplotlib.use("Agg")


def test_comparison_colours_exact():
    pred = np.array([[1, 1, 0, 0]], bool)
    gt = np.array([[1, 0, 1, 0]], bool)
    rgba = comparison_rgba(pred, gt)
    assert rgba.dtype == np.uint8 and rgba.shape == (1, 4, 4)
    assert tuple(rgba[0, 0]) == (255, 0, 0, 255) == (*TP_COLOUR, 255)  # TP red
    assert tuple(rgba[0, 1]) == (255, 255, 0, 255) == (*FP_COLOUR, 255)  # FP yellow
    assert tuple(rgba[0, 2]) == (0, 0, 255, 255) == (*FN_COLOUR, 255)  # FN blue
    assert tuple(rgba[0, 3]) == (0, 0, 0, 0)  # TN transparent
    assert comparison_rgba(pred * 2, gt.astype(np.uint8), alpha=100)[0, 0, 3] == 100


def _case():
    rng = np.random.default_rng(0)
    shape = (40, 30, 50)
    pet = rng.gamma(2.0, 0.5, shape).astype(np.float32)
    ct = rng.normal(0, 80, shape).astype(np.float32)
    gt = np.zeros(shape, bool)
    gt[10:16, 12:14, 20:30] = True
    gt[10:16, 20, 20:30] = True  # y=20 has fewer voxels than y=12 or 13
    pred = np.roll(gt, 2, axis=2)
    pet[gt] += 6
    return ct, pet, pred, gt


def test_default_slice_and_mip():
    _, pet, pred, gt = _case()
    assert default_slice(gt, pred, "coronal") in (12, 13)
    assert default_slice(gt, pred, "axial") in range(22, 30)  # where GT is (ties: the middle one)
    assert default_slice(None, np.zeros_like(gt), "coronal", fallback=pet) == int(
        np.unravel_index(np.argmax(pet), pet.shape)[1]
    )
    assert mip(pet, "coronal").shape == (40, 50) and mip(pet, "axial").shape == (40, 30)
    assert np.array_equal(mip(pet), pet.max(axis=1))


def test_render_overlay_writes_png_with_physical_aspect(tmp_path):
    ct, pet, pred, gt = _case()
    out = render_overlay(ct, pet, pred, gt, tmp_path / "fig" / "case.png", spacing=(2.0, 2.0, 3.0), title="x")
    img = matplotlib.image.imread(out)
    assert out.exists() and out.stat().st_size > 5000
    assert img.shape[1] > img.shape[0] > 150  # four panels side by side
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]  # no temp files left
    # doubling the z spacing makes every coronal panel taller relative to its width
    tall = matplotlib.image.imread(
        render_overlay(ct, pet, pred, gt, tmp_path / "tall.png", spacing=(2.0, 2.0, 6.0))
    )
    assert tall.shape[0] / tall.shape[1] > img.shape[0] / img.shape[1]
    # the comparison colours appear in the figure
    rgb = (img[..., :3] * 255).round().astype(int)
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).any()  # red
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)).any()  # yellow


def _marker_centre(img: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
    """Centre of the non-white pixels inside a panel, as fractions of its width and height (0, 0: top
    left)."""
    top, bottom, left, right = box
    inside = img[top:bottom, left:right, :3].min(axis=-1) < 0.8
    assert inside.any(), "no marker drawn in the panel"
    r, c = np.nonzero(inside)
    return (c.mean() + 0.5) / (right - left), (r.mean() + 0.5) / (bottom - top)


#: input orientation -> (affine, the axes its voxel order flips relative to RAS)
ORIENTATIONS = {
    "LAS": (np.diag([-2.0, 2.0, 3.0, 1.0]), (0,)),
    "LPS": (np.diag([-2.0, -2.0, 3.0, 1.0]), (0, 1)),
}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("view", ["axial", "coronal"])
def test_render_overlay_reorients_to_ras_and_draws_radiologically(tmp_path, orientation: str, view: str):
    """A marker on the patient's right, anterior and superior, stored in LAS (or LPS) voxel order, is drawn
    where it belongs once the affine reorients it: on the viewer's left (radiological convention), at the
    top (anterior in the axial view, superior in the coronal one), in every panel, at its voxel position;
    and the figure equals the one drawn from the array reoriented by hand."""
    shape = (40, 30, 50)
    # the marker in RAS voxel indices: x high = patient's right, y high = anterior, z high = superior
    xs, ys, zs = slice(34, 38), slice(22, 27), slice(40, 45)
    ras_pet = np.zeros(shape, np.float32)
    ras_pet[xs, ys, zs] = 10.0
    affine, flipped = ORIENTATIONS[orientation]
    pet = np.flip(ras_pet, flipped).copy()  # the same patient stored in the other voxel order
    pred = pet > 0
    index = 42 if view == "axial" else 24  # a slice through the marker (z, resp. y)
    kw = dict(axis=view, pet_mode="slice", slice_index=index)
    out = render_overlay(None, pet, pred, None, tmp_path / "oriented.png", affine=affine, **kw)
    img = matplotlib.image.imread(out)
    boxes = panel_boxes(img)
    assert len(boxes) == 4
    # expected centre: display column = X - 1 - x (radiological), row = (Y or Z) - 1 - (y or z)
    vert, n_vert = (ys, shape[1]) if view == "axial" else (zs, shape[2])
    want_x = (shape[0] - (xs.start + xs.stop) / 2) / shape[0]
    want_y = (n_vert - (vert.start + vert.stop) / 2) / n_vert
    for box in boxes:
        cx, cy = _marker_centre(img, box)
        assert cx < 0.5 and cy < 0.5, (cx, cy)  # patient's right on the viewer's left; anterior/superior up
        assert abs(cx - want_x) < 0.02 and abs(cy - want_y) < 0.02, ((cx, cy), (want_x, want_y))
    # reorienting by hand and giving the spacing draws the same figure
    by_hand = render_overlay(None, ras_pet, ras_pet > 0, None, tmp_path / "ras.png", spacing=(2, 2, 3), **kw)
    np.testing.assert_array_equal(matplotlib.image.imread(by_hand), img)


def test_render_overlay_rejects_bad_slice_and_shape(tmp_path):
    ct, pet, pred, gt = _case()
    with pytest.raises(ValueError, match="slice_index"):
        render_overlay(ct, pet, pred, gt, tmp_path / "bad.png", slice_index=99, axis="axial")
    with pytest.raises(ValueError, match="shape"):
        render_overlay(ct[:-1], pet, pred, gt, tmp_path / "bad.png")


def test_coronal_pet_mip_png(tmp_path):
    _, pet, _, _ = _case()
    proj = coronal_pet_mip(pet, tmp_path / "mip.png", spacing=(2.0, 2.0, 3.0))
    assert proj.shape == (40, 50)
    img = matplotlib.image.imread(tmp_path / "mip.png")
    assert img.shape[0] > img.shape[1]  # 150 mm tall vs 80 mm wide
