"""Walk the registry: every network builds, runs forward and backward, and round-trips its state_dict."""

from __future__ import annotations

import pytest
import torch

from h2aseg.models import build_network, list_networks
from h2aseg.models.factory import accepts_keyword

# Tiny widths; small windows so that every level has several tokens (a single token gives Q/K no gradient).
# A name missing here is built with its defaults ({}); one that takes ``img_size`` gets the input size.
TINY = {
    "h2aseg": {
        "channels": (2, 4, 4, 8, 8),
        "window_size": {1: (8, 8, 4), 2: (4, 4, 4), 3: (2, 2, 2), 4: (2, 2, 1), 5: (1, 1, 2)},
    },
    "unet3d": {"channels": (4, 8, 16, 32, 64)},
    "resunet3d": {"channels": (4, 8, 16, 32, 64)},
    "vnet": {},  # MONAI's VNet has fixed widths (16..256); the smallest input keeps it quick
    "unetr": {"hidden_size": 48, "num_heads": 4, "mlp_dim": 96, "feature_size": 4},
    "swinunetr": {"feature_size": 12, "window_size": 4},
    "nestedformer": {
        "features": (4, 4, 4, 8, 8, 4),
        "window_size": (2, 2, 1),
        "num_heads": 2,
        "num_tokens": 4,
    },
    "a2fseg": {"widths": (2, 4, 4, 8)},
    "sdb": {"widths": (2, 4, 4, 8)},
}
# Input sizes each network accepts (in training); others get DEFAULT_SIZE.
SIZES = {
    "h2aseg": (48, 48, 32),
    "vnet": (16, 16, 16),  # batch norm: 2 values per channel at the 1x1x1 bottleneck suffice
    "swinunetr": (64, 32, 32),  # divisible by 32, and more than a 1x1x1 bottleneck for instance norm
    "nestedformer": (32, 32, 16),  # its img_size: bottleneck 2x2x1 holds the (2, 2, 1) window
}
DEFAULT_SIZE = (32, 32, 32)
H2ASEG_CONFIGS = {
    "ours": {},
    "paper": {"variant": "paper"},
    "released": {"variant": "released"},
    "mcsa-only": {"use_tamw": False},
    "tamw-only": {"use_mcsa": False},
    "baseline": {"use_mcsa": False, "use_tamw": False},
    "multiclass": {"out_channels": 3},
}


def _kwargs(name: str) -> dict:
    kwargs = dict(TINY.get(name, {}))
    if "img_size" not in kwargs and accepts_keyword(name, "img_size"):
        kwargs["img_size"] = SIZES.get(name, DEFAULT_SIZE)
    return kwargs


def _cases() -> list[tuple[str, dict]]:
    cases = []
    for name in list_networks():
        if name == "h2aseg":
            cases += [(name, {**TINY[name], **cfg}) for cfg in H2ASEG_CONFIGS.values()]
        else:
            cases.append((name, _kwargs(name)))
    return cases


@pytest.mark.parametrize(("name", "kwargs"), _cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_forward_backward_state_dict(name: str, kwargs: dict) -> None:
    """Every registered name: train-mode forward and backward, output shapes, state_dict round trip."""
    net = build_network(name, **kwargs)
    with torch.no_grad():  # ours starts each MCSA term at gain 0, where its attention gets no gradient yet
        for p_name, p in net.named_parameters():
            if p_name.endswith(".gain"):
                p.fill_(0.5)
    x = torch.randn(2, 2, *SIZES.get(name, DEFAULT_SIZE))
    net.train()
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    assert all(o.shape[0] == 2 and o.shape[2:] == x.shape[2:] for o in outs)
    sum(o.square().mean() for o in outs).backward()
    no_grad = [
        n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    twin = build_network(name, **kwargs)
    twin.load_state_dict(net.state_dict(), strict=True)
    net.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x))


@pytest.mark.parametrize("cfg", list(H2ASEG_CONFIGS), ids=str)
def test_odd_input_sizes(cfg: str) -> None:
    net = build_network("h2aseg", **{**TINY["h2aseg"], **H2ASEG_CONFIGS[cfg]})
    x = torch.randn(1, 2, 40, 56, 20)
    outs = net(x)
    assert len(outs) == 5
    assert all(o.shape[2:] == (40, 56, 20) for o in outs)
    net.eval()
    with torch.no_grad():
        assert net(x).shape[2:] == (40, 56, 20)
        assert len(net(x, return_all=True)) == 5


def test_ct_pet_call_equals_stacked_input() -> None:
    net = build_network("h2aseg", variant="released", channels=(2, 4, 4, 8, 8)).eval()
    ct, pet = torch.randn(1, 1, 32, 32, 16), torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(ct, pet), net(torch.cat([ct, pet], 1)))


def test_eval_returns_finest_train_returns_five() -> None:
    net = build_network("h2aseg", channels=(2, 4, 4, 8, 8))
    x = torch.randn(1, 2, 32, 32, 32)
    assert isinstance(net(x), list)
    net.eval()
    with torch.no_grad():
        finest = net(x)
        torch.testing.assert_close(finest, net(x, return_all=True)[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": (8, 16, 32, 64)}, "channels must be 5"),
        ({"channels": (8, 16, 0, 64, 128)}, "channels must be 5"),
        ({"window_size": (8, 8)}, "window_size"),
        ({"window_size": (8, 0, 4)}, "window_size"),
        ({"out_channels": 0}, "out_channels"),
        ({"variant": "v2"}, "variant"),
        ({"mcsa_levels": (0, 2)}, "mcsa_levels"),
        ({"dropout": 1.0}, "dropout"),
        ({"in_channels": 1}, "in_channels"),
        ({"in_channels": 3, "branch_inputs": ((0,), (1, 5))}, "branch_inputs: the PET branch"),
        ({"attention": "flash"}, "attention"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_network("h2aseg", **kwargs)


def test_unknown_network_name() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        build_network("no-such-net")


def test_too_small_training_patch_message() -> None:
    net = build_network("h2aseg", channels=(2, 4, 4, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        net(torch.randn(1, 2, 16, 16, 8))


def test_bad_input_shape_message() -> None:
    net = build_network("h2aseg", channels=(2, 4, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        net(torch.randn(1, 3, 16, 16, 8))


@pytest.mark.parametrize("levels", [True, (1,), (1, 2)])
def test_gradient_checkpointing_gives_the_same_gradients(levels: bool | tuple[int, ...]) -> None:
    kwargs = {**TINY["h2aseg"]}
    net = build_network("h2aseg", **kwargs)
    twin = build_network("h2aseg", gradient_checkpointing=levels, **kwargs)
    assert twin.gradient_checkpointing == ((1, 2, 3, 4, 5) if levels is True else levels)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(1, 2, 48, 48, 32)
    for model in (net, twin):
        sum(o.square().mean() for o in model(x)).backward()
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_levels_are_checked() -> None:
    with pytest.raises(ValueError, match=r"levels must be among 1\.\.5"):
        build_network("h2aseg", **TINY["h2aseg"], gradient_checkpointing=(0, 6))


def test_instance_norm_statistics_in_float32_under_bf16_autocast() -> None:
    from h2aseg.models.blocks import norm

    x = (1000.0 + 1e-2 * torch.randn(1, 2, 32, 32, 16)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(2)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), torch.nn.functional.instance_norm(x.float()), rtol=0.02, atol=0.02)
