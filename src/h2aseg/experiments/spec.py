"""The experiment file: typed dataclasses for its YAML, validated with one-line errors naming file and field.

An experiment file names a dataset, the methods (registry networks with ``--set``-style overrides, or the
training-free SUV thresholds), the seeds and a training schedule; :func:`load_spec` reads and checks it and
:meth:`ExperimentSpec.run_config` gives the full :class:`~h2aseg.config.Config` of one (method, seed) run.
Example (``experiments/table2-cpu.yaml`` has more)::

    name: Table 2 (synthetic phantom)
    dataset: {name: Synthetic, root: ../synth-cohort, layout: auto, preset: synthetic}
    schedule: cpu-small          # paper | cpu-small | {base: cpu-small, overrides: [train.epochs=2]}
    seeds: [0, 1, 2, 3]
    methods:
      - {label: suv_2.5, network: suv_2.5}
      - {label: baseline, network: h2aseg, ablation: {mcsa: false, tamw: false}}
      - {label: unet3d, title: UNet-3D, network: unet3d, overrides: [model.extra.dropout=0.1]}

Relative paths (``dataset.root``, ``dataset.config``) are relative to the experiment file's folder;
``$VAR``/``${VAR}`` and ``~`` are expanded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from h2aseg.config import PRESETS, Config, ConfigError, load_config
from h2aseg.errors import H2ASegError

#: Training-free rows (``h2aseg.inference.thresholding``) and their default titles.
THRESHOLD_METHODS = {"suv_2.5": "SUV >= 2.5", "suv_41pct": "41% SUVmax"}
#: Methods that exist but are not run by this runner, and why.
UNSUPPORTED_METHODS = {
    "nnunet": "is not supported by the experiment runner yet (nnU-Net runs through its export route)",
}
#: Schedules: the assignments each adds to the base preset (``paper``: none, the preset's own recipe).
SCHEDULES: dict[str, tuple[str, ...]] = {
    "paper": (),
    "cpu-small": (
        "data.patch_size=[64,64,32]",
        "train.batch_size=2",
        "data.crops_per_case=2",
        "train.epochs=4",
        "train.steps_per_epoch=10",
        "train.warmup_steps=5",
        "train.val_every=2",
        "train.val_max_cases=4",
        "train.amp=off",
        "infer.amp=off",
        "infer.overlap=0.25",
    ),
}
#: Fields the runner sets itself (or that have their own key in the experiment file).
RESERVED_FIELDS = {
    "train.seed": "use the experiment's seeds",
    "data.split_file": "the runner makes one split in the output folder",
    "data.cache_dir": "the runner shares one cache in the output folder",
    "data.root": "use dataset.root",
    "model.name": "use the method's network",
}
DEFAULT_SEEDS = (0, 1, 2, 3)
PROTOCOLS = ("paper", "autopet", "hecktor")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
TOP_FIELDS = {
    "name",
    "dataset",
    "schedule",
    "seeds",
    "overrides",
    "methods",
    "protocol",
    "lock_timeout_s",
    "std_over",
}


class SpecError(H2ASegError):
    """The experiment file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Ablation:
    """A Table-2 row: which of H2ASeg's modules the configuration keeps."""

    mcsa: bool
    tamw: bool


@dataclass(frozen=True)
class MethodSpec:
    """One row of the tables: a registry network (trained per seed) or a training-free threshold."""

    label: str  # folder name under runs/
    network: str
    title: str  # shown in the tables
    overrides: tuple[str, ...] = ()
    ablation: Ablation | None = None

    @property
    def training_free(self) -> bool:
        return self.network in THRESHOLD_METHODS


@dataclass(frozen=True)
class DatasetSpec:
    """Where the cases are and which preset (or config file) the runs start from."""

    root: Path
    layout: str = "auto"
    preset: str | None = "synthetic"
    config: Path | None = None
    name: str = ""

    @property
    def base(self) -> str:
        """What :func:`~h2aseg.config.load_config` starts from: the config file, else the preset."""
        return str(self.config) if self.config is not None else str(self.preset)


@dataclass(frozen=True)
class ScheduleSpec:
    """``base`` (a key of :data:`SCHEDULES`) plus explicit ``overrides``."""

    base: str = "paper"
    overrides: tuple[str, ...] = ()

    def assignments(self) -> tuple[str, ...]:
        return (*SCHEDULES[self.base], *self.overrides)


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment file."""

    source: Path
    name: str
    dataset: DatasetSpec
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    schedule: ScheduleSpec = ScheduleSpec()
    overrides: tuple[str, ...] = ()
    protocol: str = "paper"
    lock_timeout_s: float = 600.0
    std_over: str = "cases"  # the tables' ±: std over test cases (the paper) or over seed means

    def error(self, field: str, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {field}: {msg}")

    def base_config(self) -> Config:
        """Preset (or config file), dataset, schedule and the experiment's overrides."""
        ds = self.dataset
        cfg = _replace(load_config(ds.base), "data", root=str(ds.root), layout=ds.layout)
        return cfg.override([*self.schedule.assignments(), *self.overrides])

    def method_config(self, method: MethodSpec) -> Config:
        """The base config with the method's network, ablation switches and overrides."""
        cfg = _replace(self.base_config(), "model", name=method.network)
        switches = []
        if method.ablation is not None:
            switches = [
                f"model.use_mcsa={str(method.ablation.mcsa).lower()}",
                f"model.use_tamw={str(method.ablation.tamw).lower()}",
            ]
        return cfg.override([*switches, *method.overrides])

    def run_config(self, method: MethodSpec, seed: int | None, out: Path) -> Config:
        """A run's full config: the shared split and cache in ``out``, ``train.seed`` = ``seed``."""
        cfg = self.method_config(method) if not method.training_free else self.base_config()
        cfg = _replace(cfg, "data", split_file=str(out / "split.json"), cache_dir=str(out / "cache"))
        return cfg if seed is None else _replace(cfg, "train", seed=seed)


def _replace(cfg: Config, section: str, **fields: Any) -> Config:
    """A copy of ``cfg`` with ``fields`` set in ``section`` (no YAML parsing of the values)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})


# ------------------------------------------------------------------------------------------- reading
class _Reader:
    """Type checks with errors naming ``<file>: <field>``."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def error(self, field: str, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {field}: {msg}")

    def mapping(self, raw: Any, field: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(raw, dict):
            raise self.error(field, f"expected a mapping, got {raw!r}")
        unknown = sorted(str(k) for k in set(raw) - allowed)
        if unknown:
            where = ", ".join(f"{field}.{u}" if field else u for u in unknown)
            raise self.error(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if raw.get(key) is None:
                raise self.error(f"{field}.{key}" if field else key, "is required")
        return raw

    def string(self, raw: Any, field: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.error(field, f"expected a non-empty string, got {raw!r}")
        return raw

    def boolean(self, raw: Any, field: str) -> bool:
        if not isinstance(raw, bool):
            raise self.error(field, f"expected true or false, got {raw!r}")
        return raw

    def number(self, raw: Any, field: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
            raise self.error(field, f"expected a positive number, got {raw!r}")
        return float(raw)

    def choice(self, raw: Any, field: str, choices: tuple[str, ...] | list[str]) -> str:
        if raw not in choices:
            raise self.error(field, f"expected one of {', '.join(choices)}, got {raw!r}")
        return str(raw)

    def assignments(self, raw: Any, field: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise self.error(field, f"expected a list of section.key=value strings, got {raw!r}")
        for i, item in enumerate(raw):
            key = item.split("=", 1)[0].strip()
            if "=" not in item:
                raise self.error(f"{field}[{i}]", f"{item!r} is not of the form section.key=value")
            if key in RESERVED_FIELDS:
                raise self.error(f"{field}[{i}]", f"{key} cannot be set here ({RESERVED_FIELDS[key]})")
        return tuple(raw)

    def path(self, raw: Any, field: str) -> Path:
        text = os.path.expanduser(os.path.expandvars(self.string(raw, field)))
        unset = re.search(r"\$\{?(\w+)", text)
        if unset:
            raise self.error(field, f"{raw}: environment variable {unset.group(1)} is not set")
        p = Path(text)
        return p if p.is_absolute() else (self.source.parent / p).resolve()


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file (network names are checked against the registry now)."""
    source = Path(path)
    if not source.is_file():
        raise SpecError(f"{source}: experiment file not found")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"{source}: not a readable YAML file ({e})") from None
    rd = _Reader(source)
    raw = rd.mapping(raw, "", TOP_FIELDS, required=("dataset", "methods"))
    spec = ExperimentSpec(
        source=source,
        name=rd.string(raw.get("name", source.stem), "name"),
        dataset=_dataset(rd, raw["dataset"]),
        methods=_methods(rd, raw["methods"]),
        seeds=_seeds(rd, raw.get("seeds", list(DEFAULT_SEEDS))),
        schedule=_schedule(rd, raw.get("schedule", "paper")),
        overrides=rd.assignments(raw.get("overrides"), "overrides"),
        protocol=rd.choice(raw.get("protocol", "paper"), "protocol", PROTOCOLS),
        lock_timeout_s=rd.number(raw.get("lock_timeout_s", 600.0), "lock_timeout_s"),
        std_over=rd.choice(raw.get("std_over", "cases"), "std_over", ("cases", "seeds")),
    )
    _check_networks(rd, spec.methods)
    _check_configs(spec)
    return spec


def _dataset(rd: _Reader, raw: Any) -> DatasetSpec:
    from h2aseg.data.layouts import LAYOUTS

    raw = rd.mapping(raw, "dataset", {"root", "layout", "preset", "config", "name"}, required=("root",))
    if raw.get("preset") is not None and raw.get("config") is not None:
        raise rd.error("dataset.config", "give dataset.preset or dataset.config, not both")
    config = rd.path(raw["config"], "dataset.config") if raw.get("config") is not None else None
    if config is not None and not config.is_file():
        raise rd.error("dataset.config", f"{config}: no such file")
    preset = None
    if config is None:
        preset = rd.choice(raw.get("preset", "synthetic"), "dataset.preset", PRESETS)
    return DatasetSpec(
        root=rd.path(raw["root"], "dataset.root"),
        layout=rd.choice(raw.get("layout", "auto"), "dataset.layout", ("auto", *LAYOUTS)),
        preset=preset,
        config=config,
        name=str(raw.get("name") or ""),
    )


def _seeds(rd: _Reader, raw: Any) -> tuple[int, ...]:
    ok = isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
    if not ok or any(s < 0 for s in raw) or len(set(raw)) != len(raw):
        raise rd.error("seeds", f"expected a non-empty list of distinct non-negative integers, got {raw!r}")
    return tuple(raw)


def _schedule(rd: _Reader, raw: Any) -> ScheduleSpec:
    if isinstance(raw, str):
        return ScheduleSpec(rd.choice(raw, "schedule", tuple(SCHEDULES)))
    raw = rd.mapping(raw, "schedule", {"base", "overrides"})
    base = rd.choice(raw.get("base", "paper"), "schedule.base", tuple(SCHEDULES))
    return ScheduleSpec(base, rd.assignments(raw.get("overrides"), "schedule.overrides"))


def _methods(rd: _Reader, raw: Any) -> tuple[MethodSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise rd.error("methods", f"expected a non-empty list of methods, got {raw!r}")
    methods = tuple(_method(rd, m, f"methods[{i}]") for i, m in enumerate(raw))
    labels: dict[str, int] = {}
    titles: dict[str, int] = {}
    combos: dict[Ablation, int] = {}
    for i, m in enumerate(methods):
        for key, seen in (("label", labels), ("title", titles)):
            value = getattr(m, key)
            if value in seen:
                raise rd.error(f"methods[{i}].{key}", f"{value!r} is used by methods[{seen[value]}] too")
            seen[value] = i
        if m.ablation is not None:
            if m.ablation in combos:
                raise rd.error(f"methods[{i}].ablation", f"same switches as methods[{combos[m.ablation]}]")
            combos[m.ablation] = i
    return methods


def _method(rd: _Reader, raw: Any, field: str) -> MethodSpec:
    allowed = {"label", "network", "title", "overrides", "ablation"}
    raw = rd.mapping(raw, field, allowed, required=("label", "network"))
    label = rd.string(raw["label"], f"{field}.label")
    if not LABEL_RE.match(label):
        raise rd.error(
            f"{field}.label",
            f"{label!r} must be a folder name (letters, digits, . _ + -); put the display name in title",
        )
    network = rd.string(raw["network"], f"{field}.network")
    ablation = None
    if raw.get("ablation") is not None:
        ab = rd.mapping(raw["ablation"], f"{field}.ablation", {"mcsa", "tamw"}, required=("mcsa", "tamw"))
        ablation = Ablation(
            rd.boolean(ab["mcsa"], f"{field}.ablation.mcsa"), rd.boolean(ab["tamw"], f"{field}.ablation.tamw")
        )
        if network != "h2aseg":
            raise rd.error(f"{field}.ablation", f"only H2ASeg has MCSA/TAMW switches, not {network!r}")
    overrides = rd.assignments(raw.get("overrides"), f"{field}.overrides")
    if network in THRESHOLD_METHODS and overrides:
        raise rd.error(f"{field}.overrides", f"{network} is training-free and takes no overrides")
    title = rd.string(raw.get("title") or THRESHOLD_METHODS.get(network, label), f"{field}.title")
    return MethodSpec(label, network, title, overrides, ablation)


def _check_networks(rd: _Reader, methods: tuple[MethodSpec, ...]) -> None:
    """Every network is registered now (the registry is read at run time, not import time)."""
    from h2aseg.models import list_networks

    known = list_networks()
    for i, m in enumerate(methods):
        field = f"methods[{i}].network"
        if m.network in UNSUPPORTED_METHODS:
            raise rd.error(field, f"{m.network!r} {UNSUPPORTED_METHODS[m.network]}")
        if not m.training_free and m.network not in known:
            raise rd.error(
                field,
                f"unknown network {m.network!r} (registered: {', '.join(known)}; "
                f"training-free: {', '.join(THRESHOLD_METHODS)})",
            )


def _check_configs(spec: ExperimentSpec) -> None:
    """Build every config once, so that a bad override is reported with the field that holds it."""
    base = spec.dataset.base
    stages: list[tuple[str, Callable[[], Config]]] = [
        ("dataset.config" if spec.dataset.config else "dataset.preset", lambda: load_config(base)),
        (
            "schedule.overrides" if spec.schedule.overrides else "schedule",
            lambda: load_config(base, spec.schedule.assignments()),
        ),
        ("overrides", spec.base_config),
    ]
    for field, build in stages:
        try:
            build()
        except ConfigError as e:
            raise spec.error(field, str(e)) from None
    for i, m in enumerate(spec.methods):
        if m.training_free:
            continue
        try:
            cfg = spec.method_config(m)
        except ConfigError as e:
            raise spec.error(f"methods[{i}].overrides", str(e)) from None
        if m.ablation is not None and (cfg.model.use_mcsa, cfg.model.use_tamw) != (
            m.ablation.mcsa,
            m.ablation.tamw,
        ):
            raise spec.error(
                f"methods[{i}].overrides",
                "contradicts its ablation (model.use_mcsa / model.use_tamw set otherwise)",
            )
