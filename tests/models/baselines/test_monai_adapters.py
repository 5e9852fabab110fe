"""The MONAI adapters: same networks as MONAI's classes, A4's defaults, clear size errors, img_size wiring."""

from __future__ import annotations

import inspect
import pkgutil
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR, UNet, VNet

from h2aseg.config import ModelConfig
from h2aseg.models import baselines, build_network
from h2aseg.models.factory import accepts_keyword, build_from_config

SMALL_UNET = {"channels": (4, 8, 16, 32, 64), "strides": (2, 2, 2, 2), "norm": "instance"}
SMALL_UNETR = {"img_size": (32, 32, 16), "feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SMALL_SWIN = {"feature_size": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 4}

# name -> (adapter keywords, the MONAI class built directly with the same settings)
PAIRS: dict[str, tuple[dict, Callable[[], torch.nn.Module]]] = {
    "unet3d": (
        {"out_channels": 1, **SMALL_UNET},
        lambda: UNet(3, 2, 1, num_res_units=0, **SMALL_UNET),
    ),
    "resunet3d": (
        {"out_channels": 3, **SMALL_UNET},
        lambda: UNet(3, 2, 3, num_res_units=2, **SMALL_UNET),
    ),
    "vnet": ({"out_channels": 2}, lambda: VNet(spatial_dims=3, in_channels=2, out_channels=2)),
    "unetr": (
        {"out_channels": 1, **SMALL_UNETR},
        lambda: UNETR(2, 1, proj_type="conv", norm_name="instance", res_block=True, **SMALL_UNETR),
    ),
    "swinunetr": ({"out_channels": 2, **SMALL_SWIN}, lambda: SwinUNETR(2, 2, use_v2=False, **SMALL_SWIN)),
}


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", list(PAIRS))
def test_same_network_as_monai(name: str) -> None:
    kwargs, monai_net = PAIRS[name]
    ours, theirs = build_network(name, **kwargs), monai_net()
    assert isinstance(ours, type(theirs))
    assert _count(ours) == _count(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # MONAI-trained weights load as they are


A4_DEFAULTS = {
    "unet3d": {
        "out_channels": 2,
        "channels": (16, 32, 64, 128, 256),
        "strides": (2, 2, 2, 2),
        "num_res_units": 0,
        "norm": "instance",
    },
    "resunet3d": {"out_channels": 2, "channels": (16, 32, 64, 128, 256), "num_res_units": 2},
    "vnet": {"out_channels": 2, "dropout_prob_down": 0.5, "dropout_prob_up": (0.5, 0.5)},
    "unetr": {
        "out_channels": 2,
        "img_size": (128, 128, 64),
        "feature_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_heads": 12,
        "proj_type": "conv",
        "norm_name": "instance",
        "res_block": True,
        "dropout_rate": 0.0,
    },
    "swinunetr": {
        "out_channels": 2,
        "feature_size": 48,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "use_v2": False,
    },
}


@pytest.mark.parametrize("name", list(A4_DEFAULTS))
def test_defaults_are_baselines_a4(name: str) -> None:
    from h2aseg.models import registry

    params = inspect.signature(registry.network_factory(name)).parameters
    assert {k: params[k].default for k in A4_DEFAULTS[name]} == A4_DEFAULTS[name]


def test_unet_default_build_and_sigmoid_output() -> None:
    net = build_network("unet3d", out_channels=1)
    assert _count(net) == _count(UNet(3, 2, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), norm="instance"))
    net = build_network("unet3d", **SMALL_UNET)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 2, 32, 16, 48)).shape == (1, 2, 32, 16, 48)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "message"),
    [
        ("unet3d", SMALL_UNET, (40, 48, 30), r"\(40, 48, 30\) is not divisible by 16.*\(48, 48, 32\)"),
        ("resunet3d", SMALL_UNET, (16, 16, 20), r"\(16, 16, 20\) is not divisible by 16.*\(16, 16, 32\)"),
        ("vnet", {}, (16, 24, 16), r"\(16, 24, 16\) is not divisible by 16.*\(16, 32, 16\)"),
        ("swinunetr", SMALL_SWIN, (64, 32, 48), r"\(64, 32, 48\) is not divisible by 32.*\(64, 32, 64\)"),
        (
            "unet3d",
            {**SMALL_UNET, "strides": (2, (2, 2, 1), 2, 2)},
            (32, 32, 12),
            r"\(32, 32, 12\) is not divisible by \(16, 16, 8\).*\(32, 32, 16\)",
        ),
        ("unetr", SMALL_UNETR, (32, 32, 32), r"\(32, 32, 32\) differs from img_size \(32, 32, 16\)"),
    ],
)
def test_input_size_errors_name_the_size(name: str, kwargs: dict, size: tuple, message: str) -> None:
    net = build_network(name, **kwargs).eval()
    with pytest.raises(ValueError, match=f"{name}: .*{message}"):
        net(torch.randn(1, 2, *size))


def test_anisotropic_strides_accept_their_sizes() -> None:
    net = build_network("unet3d", **{**SMALL_UNET, "strides": (2, (2, 2, 1), 2, 2)}).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32, 8)).shape == (1, 2, 32, 32, 8)


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [("unet3d", SMALL_UNET, (16, 16, 16)), ("swinunetr", SMALL_SWIN, (32, 32, 32))],
)
def test_single_voxel_bottleneck_is_refused(name: str, kwargs: dict, size: tuple) -> None:
    net = build_network(name, **kwargs)
    big = (2 * size[0], *size[1:])
    for mode in (True, False):  # instance norm has no running statistics: evaluation fails alike
        with pytest.raises(ValueError, match=rf"{name}: .*\({size[0]}, .*too small.*\({big[0]}, {big[1]}, "):
            net.train(mode)(torch.randn(2, 2, *size))


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("unetr", {**SMALL_UNETR, "img_size": (30, 32, 16)}, r"img_size \(30, 32, 16\).*\(32, 32, 16\)"),
        ("unetr", {**SMALL_UNETR, "img_size": 8}, r"img_size \(8, 8, 8\).*\(16, 16, 16\)"),
        (
            "unetr",
            {**SMALL_UNETR, "hidden_size": 50},
            r"hidden_size 50 .*num_heads 4; use e\.g\. hidden_size 52",
        ),
        ("swinunetr", {"feature_size": 18}, r"feature_size 18 .*use e\.g\. feature_size 24"),
        ("swinunetr", {"img_size": (64, 64, 64)}, r"img_size .*MONAI 1\.5"),
        ("unet3d", {"in_channels": 1}, r"in_channels is fixed at 2"),
        ("vnet", {"spatial_dims": 2}, r"spatial_dims is fixed at 3"),
        ("unet3d", {"channels": (4, 8, 16)}, r"channels needs one entry more than strides"),
    ],
)
def test_build_time_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: {message}"):
        build_network(name, **kwargs)


@pytest.mark.parametrize("name", ["unet3d", "vnet", "unetr"])
def test_wrong_channel_count_is_refused(name: str) -> None:
    net = build_network(name, **(SMALL_UNETR if name == "unetr" else {}))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        net(torch.randn(1, 3, 32, 32, 16))


def test_unetr_never_waits_for_unused_gradients() -> None:
    net = build_network("unetr", **SMALL_UNETR)
    net(torch.randn(2, 2, 32, 32, 16)).square().mean().backward()
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all("norm_cross_attn" in n for n in frozen)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_build_from_config_passes_the_patch_size_as_img_size() -> None:
    cfg = ModelConfig(
        name="unetr", out_channels=1, extra={k: v for k, v in SMALL_UNETR.items() if k != "img_size"}
    )
    net = build_from_config(cfg, patch_size=[32, 16, 48])
    assert net.img_size == (32, 16, 48)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 2, 32, 16, 48)).shape == (1, 1, 32, 16, 48)
    # model.extra wins over the patch size; without a patch size the network's default applies
    cfg.extra["img_size"] = [16, 16, 16]
    assert build_from_config(cfg, patch_size=(32, 16, 48)).img_size == (16, 16, 16)
    del cfg.extra["img_size"]
    assert build_from_config(cfg).img_size == (128, 128, 64)


def test_img_size_only_for_networks_that_name_it() -> None:
    assert accepts_keyword("unetr", "img_size")
    assert not accepts_keyword("swinunetr", "img_size")  # **kwargs does not count
    assert not accepts_keyword("h2aseg", "img_size")
    assert not accepts_keyword("no-such-net", "img_size")
    cfg = ModelConfig(name="unet3d", extra={"channels": [4, 8, 16, 32, 64]})
    # model.out_channels unset: the network's own default output count
    built = build_from_config(cfg, patch_size=(32, 32, 32))
    assert _count(built) == _count(build_network("unet3d", **SMALL_UNET))


def test_every_module_of_the_package_is_imported() -> None:
    found = {m.name for m in pkgutil.iter_modules(baselines.__path__)}
    assert {"unet3d", "resunet3d", "vnet", "unetr", "swinunetr"} <= found
    assert set(baselines.MODULES) == found
    assert all(f"h2aseg.models.baselines.{name}" in sys.modules for name in found)


def test_importing_a_baseline_module_first_has_no_cycle() -> None:
    code = (
        "import h2aseg.models.baselines.unetr\n"
        "from h2aseg.models import build_network, list_networks\n"
        "assert {'h2aseg', 'unet3d', 'resunet3d', 'vnet', 'unetr', 'swinunetr'} <= set(list_networks())\n"
        "build_network('unet3d', channels=(2, 2, 2, 2, 2))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
