"""MCSA knows what other windows hold, not where they lie (no positional encoding, as in the paper).

Step (e) of the MCSA study (docs/results.md, "(e), tested") rests on this. Attention is a softmax-weighted
sum over keys that depends on their content alone, and between windows MCSA attends over one token per
window (each window pooled by a learned window-sized conv, the only place MCSA weighs positions, and then
only within a window). So exchanging two whole windows far from a query leaves MCSA's output at the query
unchanged in the paper's MCSA, while changing what one far window holds does change it: MCSA can learn
that a hot spot like this one exists elsewhere in the patch, not that it sits at this voxel's mirror image.
In ours (each term normalised over the map) and the released code (InstanceNorm after each stage) the
exchange still moves the query a little, through the map-wide statistics of the up-sampled inter-window
term (trilinear up-sampling mixes neighbouring windows' tokens, so their order changes the statistics):
a few per cent of what a change of content does, one number per channel for the whole map, not a
direction to a partner.
"""

from __future__ import annotations

import pytest
import torch

from h2aseg.models.mcsa import MCSA

SHAPE = (32, 32, 16)  # 4 x 4 x 4 windows of (8, 8, 4), as level 2 of the synthetic preset's patch
QUERY = (1, 1, 1)  # in window (0, 0, 0)
FAR_A = (slice(24, 32), slice(24, 32), slice(12, 16))  # window (3, 3, 3)
FAR_B = (slice(16, 24), slice(24, 32), slice(0, 4))  # window (2, 3, 0)


def _swap_windows(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[(..., *FAR_A)], y[(..., *FAR_B)] = x[(..., *FAR_B)], x[(..., *FAR_A)]
    return y


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("paper", {}),
        ("ours", {"term_norm": True}),
        ("released", {"combine": "mean", "norm_act": True, "pool_window": (4, 4, 4), "align_corners": True}),
    ],
)
def test_mcsa_at_a_voxel_sees_what_far_windows_hold_not_where(variant: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    mcsa = MCSA(6, (8, 8, 4), qk_channels=6, **kwargs).double().eval()  # float64: sums in any order agree
    if variant == "ours":
        with torch.no_grad():
            mcsa.gain.fill_(1.0)  # trained gains are not zero; at zero the stage is the identity
    ct, pet = torch.randn(1, 6, *SHAPE, dtype=torch.float64), torch.randn(1, 6, *SHAPE, dtype=torch.float64)
    hotter = pet.clone()
    hotter[(..., *FAR_A)] += 3.0
    with torch.no_grad():
        out_ct, out_pet = mcsa(ct, pet)
        moved_ct, moved_pet = mcsa(_swap_windows(ct), _swap_windows(pet))
        changed_ct, _ = mcsa(ct, hotter)
    q = (0, slice(None), *QUERY)
    content = float((changed_ct[q] - out_ct[q]).abs().max())
    assert content > 1e-3  # what a far window holds reaches the query
    if variant == "paper":
        torch.testing.assert_close(moved_ct[q], out_ct[q], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(moved_pet[q], out_pet[q], rtol=1e-10, atol=1e-10)
    else:  # only through map-wide normalisation statistics (measured: 1-6 % in ours, under 1 % released)
        assert float((moved_ct[q] - out_ct[q]).abs().max()) < 0.1 * content
