"""``build_from_config``: the network's own ``out_channels`` default; constructor errors as ConfigError."""

from __future__ import annotations

import pytest

from h2aseg.config import Config, ConfigError, ModelConfig, load_config
from h2aseg.models.factory import build_from_config, network_kwargs, resolved_out_channels

SMALL = {"channels": (2, 4, 4, 4, 4), "mcsa_levels": (4, 5)}


@pytest.mark.parametrize(("variant", "expected"), [("paper", 1), ("released", 2)])
def test_out_channels_unset_keeps_the_variants_default(variant: str, expected: int) -> None:
    cfg = Config.from_dict({"model": {"variant": variant, "channels": [2, 4, 4, 4, 4]}}).model
    assert cfg.out_channels is None
    assert "out_channels" not in network_kwargs(cfg)
    model = build_from_config(cfg)
    assert model.out_channels == expected == resolved_out_channels(cfg)  # type: ignore[attr-defined]


def test_out_channels_set_explicitly_wins() -> None:
    cfg = ModelConfig(variant="released", out_channels=1, **SMALL)  # type: ignore[arg-type]
    assert network_kwargs(cfg)["out_channels"] == 1
    assert build_from_config(cfg).out_channels == 1 == resolved_out_channels(cfg)  # type: ignore[attr-defined]


@pytest.mark.parametrize("preset", ["autopet2", "hecktor2022", "synthetic"])
def test_presets_keep_their_explicit_out_channels(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.model.out_channels == 1 == resolved_out_channels(cfg.model)


def test_a_baseline_gets_its_constructor_default() -> None:
    cfg = ModelConfig(name="unet3d")
    assert "out_channels" not in network_kwargs(cfg)
    assert resolved_out_channels(cfg) == 2
    assert resolved_out_channels(ModelConfig(name="unet3d", extra={"out_channels": 3})) == 3


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        ({"channels": (1, 2)}, ["model", "'h2aseg'", "channels", "[1, 2]"]),  # ValueError of the network
        ({**SMALL, "extra": {"no_such_arg": 1}}, ["model", "'h2aseg'", "no_such_arg"]),  # TypeError
    ],
)
def test_constructor_errors_become_config_errors(fields: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_from_config(ModelConfig(**fields))
    assert isinstance(info.value.__cause__, ValueError | TypeError)
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_network_names_model_name() -> None:
    with pytest.raises(ConfigError, match=r"model\.name: unknown network 'nope'.*h2aseg"):
        build_from_config(ModelConfig(name="nope"))
    with pytest.raises(ConfigError, match=r"model\.name"):
        resolved_out_channels(ModelConfig(name="nope"))
