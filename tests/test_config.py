"""Typed config: presets load, overrides parse as users type them, bad fields are named."""

from __future__ import annotations

import pytest

from h2aseg.config import PRESETS, Config, ConfigError, load_config, preset_path, save_config


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset: str, tmp_path) -> None:
    cfg = load_config(preset)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_paper_recipe_in_autopet_preset() -> None:
    t = load_config("autopet2").train
    assert (t.lr, t.weight_decay, t.epochs, t.batch_size, t.optimizer) == (1e-4, 1e-5, 200, 2, "adam")
    assert load_config("autopet2").data.patch_size == (128, 128, 64)
    assert load_config("hecktor2022").data.target_spacing == (1.0, 1.0, 1.0)


def test_overrides_as_users_type_them() -> None:
    cfg = load_config("synthetic", ["train.lr=5e-5", "train.amp=off", "model.channels=[4,8,16,32,64]"])
    assert cfg.train.lr == 5e-5 and cfg.train.amp == "off" and cfg.model.channels == (4, 8, 16, 32, 64)
    assert Config().override(["data.target_spacing=null"]).data.target_spacing is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epoch=3", "unknown config field"),
        ("train.epochs=three", "expected an integer"),
        ("model.window_size=[8,8]", "expected 3 values"),
        ("trainepochs", "section.key=value"),
    ],
)
def test_bad_overrides_are_named(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config().override([item])


def test_unknown_preset_or_file() -> None:
    with pytest.raises(ConfigError, match="no such preset or file"):
        load_config("autopet3")


def test_gradient_checkpointing_is_a_switch_or_levels() -> None:
    assert load_config("autopet2", ["model.gradient_checkpointing=true"]).model.gradient_checkpointing is True
    cfg = load_config("autopet2", ["model.gradient_checkpointing=[1,2]"])
    assert cfg.model.gradient_checkpointing == (1, 2)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_config("autopet2", ["model.gradient_checkpointing=level1"])


@pytest.mark.parametrize("preset", ["autopet2", "hecktor2022", "synthetic"])
def test_every_preset_setting_says_whose_it_is(preset: str) -> None:
    unmarked = [
        line
        for line in preset_path(preset).read_text().splitlines()
        if line.startswith("  ")
        and not line.strip().startswith(("#", "name:"))
        and not any(m in line for m in ("[paper]", "[released]", "[ours]"))
    ]
    assert not unmarked, f"{preset}.yaml lines without a paper/released/ours mark: {unmarked}"


@pytest.mark.parametrize(
    ("assignment", "field", "allowed"),
    [
        ("train.optimizer=sgd", "train.optimizer", "adam, adamw"),
        ("model.variant=official", "model.variant", "ours, paper, released"),
        ("data.augment=strict", "data.augment", "configured, paper, released"),
        ("infer.amp=fp8", "infer.amp", "auto, bf16, fp16, off"),
        ("data.layout=nifti", "data.layout", "auto, autopet, autopet-nnunet, hecktor, csv"),
    ],
)
def test_options_with_fixed_values_are_checked_at_load(assignment: str, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: .* is not one of {allowed}$"):
        load_config("synthetic", [assignment])


def test_yaml_off_is_read_as_the_amp_option() -> None:
    assert load_config("synthetic", ["train.amp=off", "infer.amp=bf16"]).train.amp == "off"
