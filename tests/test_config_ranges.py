"""Every numeric and enumerated config field has its allowed values checked where a config is built.

The tests walk the fields of every section (``dataclasses.fields``): a number (or tuple of numbers) must
declare :class:`~h2aseg.config.Bounds`, and every value outside them, of the wrong type, or (for an option)
not among its choices is a :class:`~h2aseg.config.ConfigError` naming ``section.field``. A new numeric field
without bounds fails :func:`test_every_numeric_field_declares_its_bounds`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.config import (
    BOUNDS,
    PRESETS,
    Bounds,
    Config,
    ConfigError,
    InferConfig,
    ModelConfig,
    check_section,
    load_config,
)
from h2aseg.inference.sliding import check_infer_config


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type, else ``(tp,)``."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _leaves(tp: Any) -> set[Any]:
    """Every type a value of ``tp`` or one of its elements can have (unions and tuples opened)."""
    out: set[Any] = set()
    for member in _members(tp):
        if typing.get_origin(member) is tuple:
            out |= set().union(*(_leaves(a) for a in typing.get_args(member) if a is not Ellipsis))
        else:
            out.add(member)
    return out


def _is_numeric(tp: Any) -> bool:
    return bool(_leaves(tp) & {int, float})


def _is_option(tp: Any) -> bool:
    return any(typing.get_origin(t) is Literal for t in _leaves(tp))


def _fields() -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """``(section.field, field, type)`` for every field of every section of :class:`Config`."""
    out = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        out += [(f"{section.name}.{f.name}", f, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


FIELDS = _fields()
NUMERIC = [(key, f, tp) for key, f, tp in FIELDS if _is_numeric(tp)]
OPTIONS = [(key, f, tp) for key, f, tp in FIELDS if _is_option(tp)]


def _load(key: str, value: Any) -> Config:
    section, name = key.split(".")
    return Config.from_dict({section: {name: value}}, source="test")


def _tuple_type(tp: Any) -> Any | None:
    """The ``tuple[...]`` alternative of ``tp`` (None for a scalar field)."""
    return next((m for m in _members(tp) if typing.get_origin(m) is tuple), None)


def _inside(b: Bounds, integer: bool) -> float:
    """A number the bounds admit."""
    lo = b.ge if b.ge is not None else b.gt
    hi = b.le if b.le is not None else b.lt
    if lo is not None and hi is not None:
        value = (lo + hi) / 2
    else:
        value = lo + 1 if lo is not None else hi - 1 if hi is not None else 0
    return int(value) if integer else value


def _outside(b: Bounds, integer: bool) -> list[float]:
    """Numbers just past each bound (the bound itself where it is excluded); non-finite ones for floats."""
    below = [b.ge - 1] if b.ge is not None else [b.gt] if b.gt is not None else []
    above = [b.le + 1] if b.le is not None else [b.lt] if b.lt is not None else []
    return below + above + ([] if integer else [math.nan, math.inf])


def _valid(f: dataclasses.Field[Any], tp: Any) -> Any:
    """A value the field admits: its default when that is a number (or numbers), else numbers inside its
    bounds of the right shape (so a field defaulting to None or false is tried with a number too)."""
    if isinstance(f.default, int | float | tuple) and not isinstance(f.default, bool):
        return f.default
    bounds = f.metadata.get(BOUNDS, Bounds())
    tuple_tp = _tuple_type(tp)
    if tuple_tp is None:
        return _inside(bounds, int in _leaves(tp))
    args = typing.get_args(tuple_tp)
    n = 1 if Ellipsis in args else len(args)
    return (_inside(bounds, int in _leaves(tuple_tp)),) * n


def _bad_values(f: dataclasses.Field[Any], tp: Any) -> list[Any]:
    """Values of the field's type that its bounds refuse: each number outside, a tuple's joint rule broken
    (none without bounds: :func:`test_every_numeric_field_declares_its_bounds` names such a field)."""
    if BOUNDS not in f.metadata:
        return []
    b: Bounds = f.metadata[BOUNDS]
    tuple_tp = _tuple_type(tp)
    integer = int in _leaves(tp)
    if tuple_tp is None:
        return _outside(b, integer)
    base = list(_valid(f, tp))
    bad: list[Any] = [[v, *base[1:]] for v in _outside(b, integer)]
    if b.increasing:
        bad.append(base[::-1])
    if b.total is not None:
        bad.append([v / 2 for v in base])
    return bad


def test_the_walk_sees_the_numeric_and_enumerated_fields() -> None:
    numeric, options = {key for key, _, _ in NUMERIC}, {key for key, _, _ in OPTIONS}
    assert {"train.lr", "train.weight_decay", "train.batch_size", "data.num_workers"} <= numeric
    assert {"data.patch_size", "infer.overlap", "model.gradient_checkpointing"} <= numeric
    assert {"data.layout", "model.variant", "train.optimizer", "infer.amp", "infer.blend"} <= options
    assert "model.extra" not in numeric | options and "train.deterministic" not in numeric


def test_every_numeric_field_declares_its_bounds() -> None:
    missing = [key for key, f, _ in NUMERIC if BOUNDS not in f.metadata]
    assert not missing, f"numeric config fields without Bounds (field metadata): {missing}"
    stray = [key for key, f, tp in FIELDS if BOUNDS in f.metadata and not _is_numeric(tp)]
    assert not stray, f"Bounds on fields that hold no numbers: {stray}"


@pytest.mark.parametrize(("section", "name"), [(f.name, f.name) for f in dataclasses.fields(Config)])
def test_defaults_and_presets_keep_to_the_rules(section: str, name: str) -> None:
    for cfg in (Config(), *(load_config(p) for p in PRESETS)):
        check_section(getattr(cfg, section), name)


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, v) for key, f, tp in NUMERIC for v in _bad_values(f, tp)],
    ids=lambda v: str(v),
)
def test_numbers_outside_their_bounds_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^test: {key} must be .*, got "):
        _load(key, value)


@pytest.mark.parametrize(("key", "f", "tp"), NUMERIC, ids=[key for key, _, _ in NUMERIC])
def test_numbers_inside_their_bounds_and_null_are_accepted(key: str, f: Any, tp: Any) -> None:
    section, name = key.split(".")
    value = _valid(f, tp)
    assert getattr(getattr(_load(key, value), section), name) == value
    if type(None) in _members(tp):
        assert getattr(getattr(_load(key, None), section), name) is None


@pytest.mark.parametrize(("key", "f", "tp"), NUMERIC + OPTIONS, ids=[k for k, _, _ in NUMERIC + OPTIONS])
def test_wrong_types_are_refused(key: str, f: Any, tp: Any) -> None:
    wrong = 5 if _is_option(tp) else "abc"
    with pytest.raises(ConfigError, match=rf"^test: {key}\b"):
        _load(key, wrong)


@pytest.mark.parametrize(("key", "f", "tp"), OPTIONS, ids=[key for key, _, _ in OPTIONS])
def test_options_outside_their_choices_are_refused(key: str, f: Any, tp: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^test: {key}: 'no-such-choice' is not one of "):
        _load(key, "no-such-choice")


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.lr=-1", "overrides: train.lr must be >= 0, got -1.0"),
        ("train.weight_decay=-1", "overrides: train.weight_decay must be >= 0, got -1.0"),
        ("train.batch_size=0", "overrides: train.batch_size must be >= 1, got 0"),
        ("data.num_workers=-3", "overrides: data.num_workers must be >= 0, got -3"),
        ("data.patch_size=[0,64,32]", "overrides: data.patch_size must be values >= 1, got [0, 64, 32]"),
        ("infer.overlap=1.5", "overrides: infer.overlap must be in [0, 1), got 1.5"),
        ("train.grad_clip=0", "overrides: train.grad_clip must be > 0 (or null), got 0.0"),
        (
            "data.split_ratios=[0.6,0.3,0.2]",
            "overrides: data.split_ratios must be values in [0, 1] summing to 1, got [0.6, 0.3, 0.2]",
        ),
        (
            "model.gradient_checkpointing=[0]",
            "overrides: model.gradient_checkpointing must be values in [1, 5] (or true/false), got [0]",
        ),
    ],
)
def test_override_messages_name_field_range_and_value(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("synthetic", [assignment])
    assert str(info.value) == message


def test_an_override_that_is_not_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^override 'data.patch_size=\[1': the value is not valid YAML \("):
        load_config("synthetic", ["data.patch_size=[1"])


def test_model_extra_stays_free_form() -> None:
    cfg = load_config("synthetic", ["model.extra.anything=-1", "model.extra.mode=whatever"])
    assert cfg.model.extra == {"anything": -1, "mode": "whatever"}


def test_sections_built_in_code_are_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"^infer\.overlap must be in \[0, 1\), got 1\.5$"):
        check_infer_config(InferConfig(overlap=1.5))
    with pytest.raises(ConfigError, match=r"^infer\.blend: 'box' is not one of gaussian, constant$"):
        check_infer_config(InferConfig(blend="box"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^model\.dropout must be in \[0, 1\) \(or null\), got 1\.0$"):
        check_section(ModelConfig(dropout=1.0), "model")
    check_infer_config(InferConfig())


def test_stored_configs_are_checked_when_read() -> None:
    stored = Config().to_dict()
    stored["train"]["epochs"] = 0
    with pytest.raises(ConfigError, match=r"^last\.pt: train\.epochs must be >= 1, got 0$"):
        Config.from_dict(stored, source="last.pt")


@pytest.mark.parametrize(
    "assignment", ["train.lr=-1", "train.weight_decay=-1", "train.batch_size=0", "data.num_workers=-3"]
)
def test_train_refuses_a_bad_setting_in_one_line_before_reading_data(assignment: str, tmp_path: Path) -> None:
    """``h2aseg train --set train.lr=-1`` on a dataset root that does not exist: the setting is the error."""
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "nowhere"), "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--set", assignment])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    key = assignment.split("=")[0]
    assert len(errors) == 1 and f"{key} must be" in errors[0], result.output
    assert not run.exists()
