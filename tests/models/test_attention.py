"""BDSA (eq. 1) and MCSA: the fast attention routes equal the einsum reference under the same composition
code (the composition itself is checked against the paper in test_mcsa_reference.py); windows are exact
inverses; "sdpa", the fast path's old name, still works (deprecated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from h2aseg.models.attention import (
    BiDirectionalSpatialAttention,
    pad_to_multiple,
    valid_window_mask,
    window_partition,
    window_reverse,
)
from h2aseg.models.h2aseg import H2ASeg
from h2aseg.models.kernels import ATTENTION_IMPLS, attention, resolve_attention_impl
from h2aseg.models.mcsa import MCSA


@pytest.mark.parametrize(
    ("shape", "window"), [((8, 8, 4), (4, 4, 2)), ((12, 6, 9), (3, 2, 3)), ((4, 4, 4), (4, 4, 4))]
)
def test_window_partition_reverse_identity(shape: tuple, window: tuple) -> None:
    x = torch.randn(2, 3, *shape)
    tokens = window_partition(x, window)
    n_windows = (shape[0] // window[0]) * (shape[1] // window[1]) * (shape[2] // window[2])
    assert tokens.shape == (2 * n_windows, window[0] * window[1] * window[2], 3)
    torch.testing.assert_close(window_reverse(tokens, window, shape), x, rtol=0, atol=0)
    # the first window holds exactly the first block of voxels
    block = x[0, :, : window[0], : window[1], : window[2]].reshape(3, -1).T
    torch.testing.assert_close(tokens[0], block, rtol=0, atol=0)


def test_window_partition_rejects_non_dividing_window() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        window_partition(torch.randn(1, 1, 5, 4, 4), (2, 2, 2))


@pytest.mark.parametrize("combine", ["concat", "mean"])
@pytest.mark.parametrize(
    ("shape", "window"), [((8, 8, 4), (4, 4, 2)), ((10, 7, 5), (4, 4, 2)), ((6, 6, 6), None)]
)
def test_bdsa_fast_equals_einsum(combine: str, shape: tuple, window: tuple | None) -> None:
    torch.manual_seed(1)
    bdsa = BiDirectionalSpatialAttention(6, 3, combine=combine, residual=combine == "mean").eval()
    ct, pet = torch.randn(2, 6, *shape), torch.randn(2, 6, *shape)
    valid = None
    if window is not None:
        valid = valid_window_mask(shape, window, 2, ct.device)
        ct, pet = pad_to_multiple(ct, window), pad_to_multiple(pet, window)
    with torch.no_grad():
        bdsa.impl = "reference"
        ref = bdsa(ct, pet, window, valid)
        bdsa.impl = "fast"
        fast = bdsa(ct, pet, window, valid)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bdsa_global_matches_equation_one() -> None:
    """One direction, written out: softmax(Q K^T / sqrt(d)) V for target->target and target->source."""
    torch.manual_seed(2)
    c, d = 4, 4
    bdsa = BiDirectionalSpatialAttention(c, d, combine="mean").eval()
    t, s = torch.randn(1, c, 3, 2, 2), torch.randn(1, c, 3, 2, 2)
    sa = bdsa.sa_ct

    def proj(conv: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        return conv.weight.view(conv.out_channels, c) @ x.view(c, -1)  # (C', N)

    a_tt = (
        proj(sa.V_conv_target_target, t)
        @ torch.softmax(
            proj(sa.Q_conv_target_target, t).T @ proj(sa.K_conv_target_target, t) / d**0.5, dim=-1
        ).T
    )
    a_ts = (
        proj(sa.V_conv_source_target, s)
        @ torch.softmax(
            proj(sa.Q_conv_source_target, t).T @ proj(sa.K_conv_source_target, s) / d**0.5, dim=-1
        ).T
    )
    expected = sa.out.weight.view(c, c) @ (0.5 * (a_tt + a_ts))
    with torch.no_grad():
        got, _ = bdsa(t, s)
    torch.testing.assert_close(got.view(c, -1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 16, 8), (13, 9, 6), (3, 3, 2)])
def test_mcsa_fast_equals_einsum_with_padding(shape: tuple) -> None:
    torch.manual_seed(3)
    mcsa = MCSA(4, (8, 8, 4)).eval()
    ct, pet = torch.randn(1, 4, *shape), torch.randn(1, 4, *shape)
    with torch.no_grad():
        fast = mcsa(ct, pet)
        for m in mcsa.modules():
            if isinstance(m, BiDirectionalSpatialAttention):
                m.impl = "reference"
        ref = mcsa(ct, pet)
    for a, b in zip(fast, ref, strict=True):
        assert a.shape == ct.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padding_does_not_leak_into_real_voxels() -> None:
    """A padded map gives the same result at real voxels whatever the padding holds."""
    torch.manual_seed(4)
    bdsa = BiDirectionalSpatialAttention(3, 3, combine="concat").eval()
    shape, window = (6, 5, 3), (4, 4, 2)
    ct, pet = torch.randn(1, 3, *shape), torch.randn(1, 3, *shape)
    valid = valid_window_mask(shape, window, 1, ct.device)
    a_ct, a_pet = pad_to_multiple(ct, window), pad_to_multiple(pet, window)
    b_ct, b_pet = a_ct.clone(), a_pet.clone()
    b_ct[..., shape[0] :, :, :] = 5.0
    b_pet[..., :, shape[1] :, :] = -3.0
    with torch.no_grad():
        ra = bdsa(a_ct, a_pet, window, valid)
        rb = bdsa(b_ct, b_pet, window, valid)
    sl = (..., slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    for x, y in zip(ra, rb, strict=True):
        torch.testing.assert_close(x[sl], y[sl], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- impl names
def _impls(model: torch.nn.Module) -> set[str]:
    return {m.impl for m in model.modules() if isinstance(m, BiDirectionalSpatialAttention)}


def test_fast_is_the_default_and_sdpa_a_deprecated_alias() -> None:
    assert ATTENTION_IMPLS == ("fast", "reference")
    assert resolve_attention_impl("fast") == "fast" and resolve_attention_impl("reference") == "reference"
    with pytest.warns(DeprecationWarning, match="'sdpa' is deprecated"):
        assert resolve_attention_impl("sdpa") == "fast"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        resolve_attention_impl("flash")
    small = {"channels": (2, 2, 2, 2, 2), "window_size": (2, 2, 2)}
    assert _impls(H2ASeg(**small)) == {"fast"} == _impls(H2ASeg(variant="released", **small))
    with pytest.warns(DeprecationWarning, match="sdpa"):
        old = H2ASeg(attention="sdpa", **small)
    assert _impls(old) == {"fast"}
    old.set_attention_impl("reference")
    assert _impls(old) == {"reference"}
    with pytest.warns(DeprecationWarning, match="sdpa"):
        old.set_attention_impl("sdpa")
    assert _impls(old) == {"fast"}
    with pytest.raises(ValueError, match="attention must be one of"):
        old.set_attention_impl("flash")


def test_sdpa_alias_gives_the_fast_kernels_result() -> None:
    q, k, v = torch.randn(2, 1, 6, 3), torch.randn(2, 1, 6, 3), torch.randn(2, 1, 6, 4)
    with pytest.warns(DeprecationWarning):
        old = attention(q, k, v, scale=0.5, impl="sdpa")
    torch.testing.assert_close(old, attention(q, k, v, scale=0.5, impl="fast"), rtol=0, atol=0)


def test_checkpoint_with_attention_sdpa_in_its_stored_config_loads(tmp_path: Path) -> None:
    """A checkpoint trained with ``--set model.extra.attention=sdpa`` (the old name) still loads."""
    from h2aseg.checkpoint import save_checkpoint
    from h2aseg.config import load_config
    from h2aseg.inference.predictor import Predictor
    from h2aseg.models.factory import build_from_config

    tiny = ["model.channels=[2,2,2,2,2]", "model.window_size=[2,2,2]", "data.patch_size=[16,16,16]"]
    cfg = load_config("synthetic", [*tiny, "model.extra.attention=sdpa"])
    assert cfg.to_dict()["model"]["extra"]["attention"] == "sdpa"
    with pytest.warns(DeprecationWarning):
        model = build_from_config(cfg.model)
    path = save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict()}, tmp_path / "old.pt")
    with pytest.warns(DeprecationWarning, match="sdpa"):
        predictor = Predictor.from_checkpoint(path)
    assert _impls(predictor.model) == {"fast"}
