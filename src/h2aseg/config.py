"""Typed configuration: one dataclass per concern, YAML presets, ``key=value`` overrides.

A run is described by :class:`Config` (``data``, ``model``, ``train``, ``infer``). Presets live in
``h2aseg/presets/*.yaml`` and hold only the fields that differ from the defaults below. Every CLI flag
maps to one dotted field (``--set train.epochs=5`` sets ``Config.train.epochs``).
"""

from __future__ import annotations

import dataclasses
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
Variant = Literal["paper", "released"]
Optimizer = Literal["adam", "adamw"]
Schedule = Literal["constant", "exponential", "cosine", "onecycle"]
Amp = Literal["auto", "bf16", "fp16", "off"]
Blend = Literal["gaussian", "constant"]
NegativeCentres = Literal["any", "hot"]
PosBalance = Literal["voxel", "lesion"]


class ConfigError(H2ASegError):
    """A configuration value, file or override is invalid; the message names it."""


@dataclass
class DataConfig:
    """Where the cases are and how they become tensors (layout, geometry, intensities, patches)."""

    root: str | None = None
    layout: Layout = "auto"
    swap_channels: bool = False  # nnU-Net layout with _0000 = PET, _0001 = CT (autoPET I baseline order)
    target_spacing: FloatTriple | None = None  # mm; None keeps the CT grid
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU clipped, then scaled to [0, 1]
    pet_window: tuple[float, float] = (0.0, 20.0)  # SUV clipped, then scaled to [0, 1]
    label_mode: LabelMode = "binary"  # binary: GTVp + GTVn merged, as the paper
    num_label_classes: int = 1  # foreground classes in the label files (HECKTOR: 2)
    patch_size: Triple = (128, 128, 64)  # paper
    crops_per_case: int = 2  # released code (2 cases x 2 crops per step)
    pos_fraction: float = 0.5  # released code: positive : negative crops = 1 : 1
    pos_jitter: float = 0.0  # 0: a positive crop is centred on a lesion voxel (released code); j > 0: on a
    # lesion voxel moved by up to j x half the patch per axis, so lesions also appear near crop faces (ours)
    pos_balance: PosBalance = "voxel"  # voxel: a positive crop's lesion voxel is drawn from all lesion voxels
    # of the study, so large lesions get most crops (MONAI, released code); lesion: a lesion first, each
    # lesion of the study equally often, then a voxel of it, so small lesions get as many crops (ours)
    lesion_case_fraction: float | None = None  # None: cases drawn uniformly (paper); f: a share f of draws
    # are studies with lesions (ours; needs train.steps_per_epoch)
    negative_centres: NegativeCentres = "any"  # any: negative crops centred on any lesion-free voxel
    # (released code); hot: on lesion-free voxels with SUV >= hot_suv (kidneys, bladder, brain, heart; ours)
    hot_suv: float = 2.5  # SUV above which a lesion-free voxel is a hard-negative crop centre
    augment: Augment = "configured"  # configured: the five fields below; paper | released (augmentation())
    crop_to_body: bool = True  # ours (the released code crops to the PET foreground)
    rotate_prob: float = 0.8  # released code (about the axial axis)
    rotate_range_deg: float = 45.0  # released code
    flip_prob: float = 0.5  # ours
    intensity_jitter: float = 0.1  # ours
    cache_dir: str | None = None  # default: <run>/cache
    split_ratios: FloatTriple = (0.6, 0.2, 0.2)
    split_seed: int = 12345
    split_file: str | None = None  # reuse a saved split
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Which network from the registry, and its constructor arguments."""

    name: str = "h2aseg"
    variant: Variant = "paper"
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    window_size: Triple = (8, 8, 4)
    mcsa_levels: tuple[int, ...] | None = None  # None: the variant's (paper 1-5, released 2-3)
    use_mcsa: bool = True
    use_tamw: bool = True
    out_channels: int | None = None  # None: the network's default (H2ASeg: paper 1, released 2; baselines 2);
    # 1: sigmoid + BCE (paper); 2: softmax + CE (released); >2: multi-class
    attn_dropout: float | None = None  # None: the variant's (paper 0, released 0.5)
    dropout: float | None = None  # None: the variant's (paper 0, released 0.5)
    gradient_checkpointing: bool | tuple[int, ...] = False  # recompute in backward: all levels, or e.g. [1]
    extra: dict[str, Any] = field(default_factory=dict)  # any further keyword of the network


@dataclass
class TrainConfig:
    """The optimisation recipe (paper: Adam, lr 1e-4, wd 1e-5, 200 epochs, 2 cases x 2 crops)."""

    epochs: int = 200
    batch_size: int = 2  # cases per step; each gives data.crops_per_case crops
    steps_per_epoch: int | None = None  # None: one pass over the training cases
    lr: float = 1e-4
    weight_decay: float = 1e-5
    optimizer: Optimizer = "adam"
    lr_schedule: Schedule = "constant"  # exponential: the released x0.99 per epoch
    lr_decay: float = 0.99
    warmup_steps: int = 0
    grad_clip: float | None = None
    deep_supervision: bool = True
    val_every: int = 10
    val_max_cases: int | None = None
    seed: int = 12345
    amp: Amp = "auto"  # auto: fp16 on CUDA, off on CPU
    device: str = "auto"
    deterministic: bool = True
    init_checkpoint: str | None = None  # start from these weights (fine-tuning)


@dataclass
class InferConfig:
    """Sliding-window prediction."""

    roi_size: Triple | None = None  # None: data.patch_size
    overlap: float = 0.5
    sw_batch_size: int = 2
    blend: Blend = "gaussian"
    tta_flips: bool = False
    body_box: bool = False  # True: windows slide over the body's bounding box only (CT above -500 HU, with
    # the margin of training's body crop), every voxel outside it is background (ours; the presets set it,
    # a checkpoint stored without the field predicts as it always did)
    threshold: float = 0.5
    save_probabilities: bool = False
    amp: Amp = "auto"
    device: str = "auto"


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
            node[parts[-1]] = yaml.safe_load(value)
        return Config.from_dict(raw, source="overrides")


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
        where = f"{source}: {prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], source, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(tp, raw[f.name], where)
    return cls(**kwargs)


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
