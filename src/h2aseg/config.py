"""Typed configuration: one dataclass per concern, YAML presets, ``key=value`` overrides.

A run is described by :class:`Config` (``data``, ``model``, ``train``, ``infer``). Presets live in
``h2aseg/presets/*.yaml`` and hold only the fields that differ from the defaults below. Every CLI flag
maps to one dotted field (``--set train.epochs=5`` sets ``Config.train.epochs``).

Every field is checked where a config is built, before any case is read: its type, the choices of an
option (``Literal``), the range of a number (:class:`Bounds`, declared in the field's metadata). Other
strings (``model.name``, ``*.device``, paths) are checked where they are used; ``model.extra`` is passed
to the network, which checks it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from h2aseg.errors import H2ASegError
from h2aseg.files import atomic_write_text

Triple = tuple[int, int, int]
FloatTriple = tuple[float, float, float]


# Options with a fixed set of values: checked when a config is loaded (the error names field and values).
Layout = Literal["auto", "autopet", "autopet-nnunet", "hecktor", "csv"]
LabelMode = Literal["binary", "multiclass"]
Augment = Literal["configured", "paper", "released"]
Variant = Literal["ours", "paper", "released"]
Optimizer = Literal["adam", "adamw"]
Schedule = Literal["constant", "exponential", "cosine", "onecycle"]
Amp = Literal["auto", "bf16", "fp16", "off"]
Blend = Literal["gaussian", "constant"]
NegativeCentres = Literal["any", "hot"]
PosBalance = Literal["voxel", "lesion"]


class ConfigError(H2ASegError):
    """A configuration value, file or override is invalid; the message names it."""


BOUNDS = "bounds"  # the field metadata key of a numeric field's Bounds


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric field, or of each number of a tuple field; always finite.

    Declared next to the field (``overlap: float = field(default=0.5, metadata=BELOW_1.meta)``) and checked
    wherever a config is built (:meth:`Config.from_dict`, so also :func:`load_config` and
    :meth:`Config.override`) or handed over (:func:`check_section`). ``None`` and ``true``/``false`` stay
    allowed where the field's type allows them.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    increasing: bool = False  # a (low, high) pair: high > low
    total: float | None = None  # the numbers sum to this (within 1e-6)

    @property
    def meta(self) -> dict[str, Bounds]:
        """The field metadata that declares these bounds."""
        return {BOUNDS: self}

    def admits(self, values: tuple[float, ...]) -> bool:
        in_range = all(self._admits_one(v) for v in values)
        ordered = not self.increasing or all(b > a for a, b in itertools.pairwise(values))
        summed = self.total is None or math.isclose(sum(values), self.total, abs_tol=1e-6)
        return in_range and ordered and summed

    def _admits_one(self, v: float) -> bool:
        return (
            math.isfinite(v)
            and (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def interval(self) -> str:
        """``in [0, 1)``, ``> 0``, ``>= 1``, ... (empty when each number may be any finite one)."""
        lo, lo_closed = (self.ge, True) if self.ge is not None else (self.gt, False)
        hi, hi_closed = (self.le, True) if self.le is not None else (self.lt, False)
        if lo is not None and hi is not None:
            return f"in {'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
        if lo is not None:
            return f"{'>=' if lo_closed else '>'} {lo:g}"
        if hi is not None:
            return f"{'<=' if hi_closed else '<'} {hi:g}"
        return ""

    def describe(self, many: bool) -> str:
        """What a value must be: ``> 0``; for a tuple e.g. ``values in [0, 1] summing to 1``."""
        interval = self.interval()
        parts = [f"values {interval}" if many else interval] if interval else []
        if self.increasing:
            parts.append("(low, high) with high > low")
        if self.total is not None:
            parts.append(f"summing to {self.total:g}")
        return " ".join(parts)


POSITIVE = Bounds(gt=0)
NON_NEGATIVE = Bounds(ge=0)
AT_LEAST_1 = Bounds(ge=1)
UNIT = Bounds(ge=0, le=1)  # a probability or a share
BELOW_1 = Bounds(ge=0, lt=1)  # a share that must leave something (dropout, window overlap)
LEVEL = Bounds(ge=1, le=5)  # an H2ASeg resolution level
WINDOW = Bounds(increasing=True)  # an intensity window (low, high)
#: the input channels ``data.body_coords`` appends (h2aseg.data.body_frame): position in the body's frame
BODY_COORDS = ("body_dx", "body_dy", "body_dz")


@dataclass
class DataConfig:
    """Where the cases are and how they become tensors (layout, geometry, intensities, patches)."""

    root: str | None = None
    layout: Layout = "auto"
    swap_channels: bool = False  # nnU-Net layout with _0000 = PET, _0001 = CT (autoPET I baseline order)
    target_spacing: FloatTriple | None = field(default=None, metadata=POSITIVE.meta)  # mm; None: the CT grid
    # HU, and SUV, clipped to the window, then scaled to [0, 1]
    ct_window: tuple[float, float] = field(default=(-1000.0, 1000.0), metadata=WINDOW.meta)
    pet_window: tuple[float, float] = field(default=(0.0, 20.0), metadata=WINDOW.meta)
    label_mode: LabelMode = "binary"  # binary: GTVp + GTVn merged, as the paper
    # foreground classes in the label files (HECKTOR: 2)
    num_label_classes: int = field(default=1, metadata=AT_LEAST_1.meta)
    patch_size: Triple = field(default=(128, 128, 64), metadata=AT_LEAST_1.meta)  # paper
    # released code (2 cases x 2 crops per step)
    crops_per_case: int = field(default=2, metadata=AT_LEAST_1.meta)
    # released code: positive : negative crops = 1 : 1
    pos_fraction: float = field(default=0.5, metadata=UNIT.meta)
    # 0: a positive crop is centred on a lesion voxel (released code); j > 0: on a lesion voxel moved by up
    # to j x half the patch per axis, so lesions also appear near crop faces (ours)
    pos_jitter: float = field(default=0.0, metadata=UNIT.meta)
    pos_balance: PosBalance = "voxel"  # voxel: a positive crop's lesion voxel is drawn from all lesion voxels
    # of the study, so large lesions get most crops (MONAI, released code); lesion: a lesion first, each
    # lesion of the study equally often, then a voxel of it, so small lesions get as many crops (ours)
    # None: cases drawn uniformly (paper); f: a share f of draws are studies with lesions (ours; needs
    # train.steps_per_epoch)
    lesion_case_fraction: float | None = field(default=None, metadata=UNIT.meta)
    negative_centres: NegativeCentres = "any"  # any: negative crops centred on any lesion-free voxel
    # (released code); hot: on lesion-free voxels with SUV >= hot_suv (kidneys, bladder, brain, heart; ours)
    # SUV above which a lesion-free voxel is a hard-negative crop centre
    hot_suv: float = field(default=2.5, metadata=POSITIVE.meta)
    augment: Augment = "configured"  # configured: the five fields below; paper | released (augmentation())
    crop_to_body: bool = True  # ours (the released code crops to the PET foreground)
    rotate_prob: float = field(default=0.8, metadata=UNIT.meta)  # released code (about the axial axis)
    rotate_range_deg: float = field(default=45.0, metadata=Bounds(ge=0, le=180).meta)  # released code
    flip_prob: float = field(default=0.5, metadata=UNIT.meta)  # ours
    intensity_jitter: float = field(default=0.1, metadata=UNIT.meta)  # ours: x (1 +- j), then + (+- j/2)
    cache_dir: str | None = None  # default: <run>/cache
    # GiB of preprocessed cases that a training process (and each of its data-loading workers) keeps in
    # memory beside the disk cache, the least recently used dropped first; None: a quarter of the machine's
    # memory shared by the processes that hold a copy (h2aseg.training.run.memory_cache_bytes); 0: none
    memory_cache_gb: float | None = field(default=None, metadata=NON_NEGATIVE.meta)
    # train, val, test shares
    split_ratios: FloatTriple = field(default=(0.6, 0.2, 0.2), metadata=Bounds(ge=0, le=1, total=1).meta)
    split_seed: int = field(default=12345, metadata=NON_NEGATIVE.meta)
    split_file: str | None = None  # reuse a saved split
    num_workers: int = field(default=0, metadata=NON_NEGATIVE.meta)
    # ours, a control (docs/results.md, step (e)): the PET mirrored across the body's midline as a third
    # input channel (h2aseg.data.mirror); H2ASeg only, whose PET branch then takes two channels
    mirror_pet: bool = False
    # ours, step (e) of the MCSA study: position in body coordinates as three more input channels for both
    # of H2ASeg's branches (h2aseg.data.body_frame): the unsigned left-right distance to the body's midline
    # and the anterior-posterior and cranio-caudal offsets from the body's centre, in units of 100 mm
    body_coords: bool = False
    # millimetres per unit of those channels: 100 gives values of up to about 5 (whole body), which the
    # level-1 shortcut (an unnormalised conv) carries into the features; 1000 keeps them under 1
    body_coords_unit_mm: float = field(default=100.0, metadata=POSITIVE.meta)

    def input_layout(self) -> tuple[str, ...]:
        """The network input's channels by name, in order: ``ct``, ``pet``, then ``mirrored_pet`` with
        ``mirror_pet`` and ``body_dx``, ``body_dy``, ``body_dz`` with ``body_coords``."""
        layout = ("ct", "pet")
        if self.mirror_pet:
            layout += ("mirrored_pet",)
        if self.body_coords:
            layout += BODY_COORDS
        return layout

    def input_channels(self) -> int:
        """How many channels the network's input has (:meth:`input_layout`)."""
        return len(self.input_layout())


@dataclass
class ModelConfig:
    """Which network from the registry, and its constructor arguments."""

    name: str = "h2aseg"
    # ours: the paper's network with MCSA terms kept in scale, chosen by the MCSA study (docs/results.md,
    # training-notes section 21); paper: the paper as written; released: the authors' code
    variant: Variant = "ours"
    channels: tuple[int, ...] = field(default=(8, 16, 32, 64, 128), metadata=AT_LEAST_1.meta)
    window_size: Triple = field(default=(8, 8, 4), metadata=AT_LEAST_1.meta)
    # None: the variant's (paper 1-5, released 2-3)
    mcsa_levels: tuple[int, ...] | None = field(default=None, metadata=LEVEL.meta)
    use_mcsa: bool = True
    use_tamw: bool = True
    # None: the network's default (H2ASeg: paper 1, released 2; baselines 2); 1: sigmoid + BCE (paper);
    # 2: softmax + CE (released); >2: multi-class
    out_channels: int | None = field(default=None, metadata=AT_LEAST_1.meta)
    # None: the variant's (paper 0, released 0.5)
    attn_dropout: float | None = field(default=None, metadata=BELOW_1.meta)
    dropout: float | None = field(default=None, metadata=BELOW_1.meta)
    # recompute in backward: all levels, or e.g. [1]
    gradient_checkpointing: bool | tuple[int, ...] = field(default=False, metadata=LEVEL.meta)
    extra: dict[str, Any] = field(default_factory=dict)  # any further keyword of the network (free-form)


@dataclass
class TrainConfig:
    """The optimisation recipe (paper: Adam, lr 1e-4, wd 1e-5, 200 epochs, 2 cases x 2 crops)."""

    epochs: int = field(default=200, metadata=AT_LEAST_1.meta)
    # cases per step; each gives data.crops_per_case crops
    batch_size: int = field(default=2, metadata=AT_LEAST_1.meta)
    # None: one pass over the training cases
    steps_per_epoch: int | None = field(default=None, metadata=AT_LEAST_1.meta)
    lr: float = field(default=1e-4, metadata=NON_NEGATIVE.meta)  # 0: the weights stay as they are
    weight_decay: float = field(default=1e-5, metadata=NON_NEGATIVE.meta)
    optimizer: Optimizer = "adam"
    lr_schedule: Schedule = "constant"  # exponential: the released x0.99 per epoch
    lr_decay: float = field(default=0.99, metadata=Bounds(gt=0, le=1).meta)  # x per epoch (exponential)
    warmup_steps: int = field(default=0, metadata=NON_NEGATIVE.meta)
    grad_clip: float | None = field(default=None, metadata=POSITIVE.meta)  # None: no clipping
    deep_supervision: bool = True
    val_every: int = field(default=10, metadata=NON_NEGATIVE.meta)  # epochs; 0: no validation
    val_max_cases: int | None = field(default=None, metadata=AT_LEAST_1.meta)  # None: every validation case
    seed: int = field(default=12345, metadata=NON_NEGATIVE.meta)
    amp: Amp = "auto"  # auto: fp16 on CUDA, off on CPU
    device: str = "auto"
    deterministic: bool = True
    init_checkpoint: str | None = None  # start from these weights (fine-tuning)
    # True: entries init_checkpoint lacks keep their fresh initialisation (e.g. MCSA grafted onto a network
    # trained without it: with term-normalised MCSA its gains start at zero, so the network starts as the
    # checkpoint's); an entry of another shape, or one the network lacks, is still an error
    init_partial: bool = False


@dataclass
class InferConfig:
    """Sliding-window prediction."""

    roi_size: Triple | None = field(default=None, metadata=AT_LEAST_1.meta)  # None: data.patch_size
    overlap: float = field(default=0.5, metadata=BELOW_1.meta)
    sw_batch_size: int = field(default=2, metadata=AT_LEAST_1.meta)
    blend: Blend = "gaussian"
    tta_flips: bool = False
    body_box: bool = False  # True: windows slide over the body's bounding box only (CT above -500 HU, with
    # the margin of training's body crop), every voxel outside it is background (ours; the presets set it,
    # a checkpoint stored without the field predicts as it always did)
    # one output channel: foreground where the probability >= threshold (several: argmax)
    threshold: float = field(default=0.5, metadata=Bounds(gt=0, lt=1).meta)
    save_probabilities: bool = False
    amp: Amp = "auto"
    device: str = "auto"
    # True: on the CPU, the network's weights and the windows in channels-last 3D layout during prediction
    # (h2aseg.models.fast_eval; the same probabilities to float rounding). Off by default: it did not win on
    # the development machine (docs/benchmarks.md "CPU inference"); benchmarks/cpu_candidates.py measures it
    cpu_fast_path: bool = False
    # True: every MCSA stage adds no attention term (its inputs pass through, the released variant's
    # norms stay), to measure what MCSA contributes to a trained model (docs/analysis.md, "MCSA knockout")
    mcsa_knockout: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "<dict>") -> Config:
        return _build(cls, raw, source, prefix="")

    def override(self, assignments: list[str] | tuple[str, ...]) -> Config:
        """Return a copy with ``section.key=value`` assignments applied (values parsed as YAML)."""
        raw = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, value = item.split("=", 1)
            parts = key.strip().split(".")
            node = raw
            for p in parts[:-1]:
                if not isinstance(node, dict) or p not in node:
                    raise ConfigError(f"override {item!r}: unknown config field {key!r}")
                node = node[p]
            if not isinstance(node, dict) or (parts[-1] not in node and parts[-2:-1] != ["extra"]):
                raise ConfigError(f"override {item!r}: unknown config field {key!r}")
            node[parts[-1]] = _parse_value(item, value)
        return Config.from_dict(raw, source="overrides")


def _parse_value(item: str, value: str) -> Any:
    """The value of the override ``item`` read as YAML (a ConfigError when it is not YAML)."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is Literal:
        if isinstance(value, bool) and "off" in args:  # YAML 1.1 reads a bare off/on as a boolean
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean (e.g. ``train.amp=off``)
            return "on" if value else "off"
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section {prefix or '<root>'!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(prefix + u for u in unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], source, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _field_value(f, tp, raw[f.name], f"{source}: {prefix}{f.name}")
    return cls(**kwargs)


def _field_value(f: dataclasses.Field[Any], tp: Any, value: Any, where: str) -> Any:
    """``value`` as the field's type ``tp``, checked against the field's :class:`Bounds` (the one check of
    a field's value: a :class:`ConfigError` naming ``where``, the allowed values and ``value``)."""
    value = _coerce(tp, value, where)
    bounds = f.metadata.get(BOUNDS)
    if bounds is None or value is None or isinstance(value, bool):
        return value
    many = isinstance(value, tuple)
    if not bounds.admits(value if many else (value,)):
        others = " or ".join(_others(tp))
        also = f" (or {others})" if others else ""
        raise ConfigError(f"{where} must be {bounds.describe(many)}{also}, got {_to_plain(value)!r}")
    return value


def _others(tp: Any) -> list[str]:
    """The values besides numbers a field of type ``tp`` may hold: ``null``, ``true/false``."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return [text for t, text in ((type(None), "null"), (bool, "true/false")) if t in args]


def check_section(section: Any, name: str) -> None:
    """Check a section built in code (e.g. an :class:`InferConfig` handed to prediction) as
    :meth:`Config.from_dict` checks a loaded one: a :class:`ConfigError` naming ``name.field``."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        _field_value(f, hints[f.name], getattr(section, f.name), f"{name}.{f.name}")


PRESETS = ("autopet2", "hecktor2022", "synthetic")


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("h2aseg") / "presets" / f"{name}.yaml"))


def load_config(path_or_preset: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset by name (``autopet2``) or a YAML file, then apply ``key=value`` overrides."""
    p = Path(path_or_preset)
    if str(path_or_preset) in PRESETS:
        p = preset_path(str(path_or_preset))
    elif not p.is_file():
        raise ConfigError(
            f"config {path_or_preset!s}: no such preset or file (presets: {', '.join(PRESETS)})"
        )
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p}: not valid YAML ({e})") from e
    cfg = Config.from_dict(raw, source=str(p))
    return cfg.override(list(overrides)) if overrides else cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
