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
      - {label: nnunet, network: nnunet, nnunet: {configuration: 3d_fullres, bin: ~/nnvenv/bin}}

``nnunet`` is nnU-Net v2 itself, run by its own commands on an export of the dataset with the experiment's
split (:mod:`h2aseg.experiments.nnunet`); its ``nnunet:`` mapping (:class:`NnunetSettings`, every key
optional) replaces ``overrides``.

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

from h2aseg.config import PRESETS, Config, ConfigError, load_config
from h2aseg.errors import H2ASegError
from h2aseg.files import read_yaml_file

#: Training-free rows (``h2aseg.inference.thresholding``) and their default titles.
THRESHOLD_METHODS = {"suv_2.5": "SUV >= 2.5", "suv_41pct": "41% SUVmax"}
#: nnU-Net v2, run through its own commands on the experiment's export (:mod:`h2aseg.experiments.nnunet`).
NNUNET = "nnunet"
#: nnU-Net's trainer per schedule when the method does not name one: its standard 1,000-epoch trainer for
#: the paper's schedule, its shortest variant (one epoch of 250 iterations) for the CPU schedule.
NNUNET_TRAINERS = {"paper": "nnUNetTrainer", "cpu-small": "nnUNetTrainer_1epoch"}
NNUNET_DEVICES = ("auto", "cpu", "cuda", "mps")
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
    "evaluate_on",
    "reference",
}
#: Parts of the split a run can be evaluated on (``evaluate_on``) and the split's name for each.
EVAL_PARTS = {"test": "test", "validation": "val"}


class SpecError(H2ASegError):
    """The experiment file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Ablation:
    """A Table-2 row: which of H2ASeg's modules the configuration keeps."""

    mcsa: bool
    tamw: bool


@dataclass(frozen=True)
class NnunetSettings:
    """The ``nnunet:`` mapping of an ``nnunet`` method: which nnU-Net v2 pipeline its runs use."""

    dataset_id: int = 999  # the export's id inside the experiment's own nnUNet_raw (out/nnunet/raw)
    configuration: str = "3d_fullres"
    trainer: str = "nnUNetTrainer"  # the file's value, else NNUNET_TRAINERS[schedule]
    planner: str = "ExperimentPlanner"  # nnUNetv2_plan_and_preprocess -pl
    plans: str = "nnUNetPlans"  # the plans the planner writes (-p of train and predict)
    device: str = "auto"  # auto: cuda when this process sees a GPU, else cpu
    processes: int = 2  # preprocessing (-np, -npfp), augmentation workers, prediction (-npp, -nps)
    tta: bool = True  # nnU-Net's mirroring at prediction (false: --disable_tta)
    bin: Path | None = None  # folder holding the nnUNetv2_* commands; None: beside this Python, then PATH

    def identity(self) -> dict[str, Any]:
        """What determines a run's result (not where the commands are, nor how many processes)."""
        d = dataclasses.asdict(self)
        for key in ("bin", "processes", "device"):
            d.pop(key)
        return d


@dataclass(frozen=True)
class MethodSpec:
    """One row of the tables: a registry network (trained per seed), nnU-Net (trained per seed by its own
    commands) or a training-free threshold."""

    label: str  # folder name under runs/
    network: str
    title: str  # shown in the tables
    overrides: tuple[str, ...] = ()
    ablation: Ablation | None = None
    nnunet: NnunetSettings | None = None  # set for (and only for) network "nnunet"

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
    evaluate_on: tuple[str, ...] = ("test",)  # parts of the split each run is predicted and scored on
    reference: str | None = None  # a method label: paired.md compares every method with it, case by case
    # further method labels (``reference: [a, b, c]``): paired-vs-<label>.md against each of them too
    also_against: tuple[str, ...] = ()

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
        """A run's full config: the shared split and cache in ``out``, ``train.seed`` = ``seed`` (for
        nnU-Net only its data settings matter: the dataset it exports)."""
        own = method.training_free or method.nnunet is not None
        cfg = self.base_config() if own else self.method_config(method)
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
    raw = read_yaml_file(source, SpecError, "experiment file")
    rd = _Reader(source)
    raw = rd.mapping(raw, "", TOP_FIELDS, required=("dataset", "methods"))
    schedule = _schedule(rd, raw.get("schedule", "paper"))
    reference, also_against = _references(rd, raw.get("reference"))
    spec = ExperimentSpec(
        source=source,
        name=rd.string(raw.get("name", source.stem), "name"),
        dataset=_dataset(rd, raw["dataset"]),
        methods=_methods(rd, raw["methods"], schedule),
        seeds=_seeds(rd, raw.get("seeds", list(DEFAULT_SEEDS))),
        schedule=schedule,
        overrides=rd.assignments(raw.get("overrides"), "overrides"),
        protocol=rd.choice(raw.get("protocol", "paper"), "protocol", PROTOCOLS),
        lock_timeout_s=rd.number(raw.get("lock_timeout_s", 600.0), "lock_timeout_s"),
        std_over=rd.choice(raw.get("std_over", "cases"), "std_over", ("cases", "seeds")),
        evaluate_on=_evaluate_on(rd, raw.get("evaluate_on", ["test"])),
        reference=reference,
        also_against=also_against,
    )
    _check_parts(rd, spec)
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


def _evaluate_on(rd: _Reader, raw: Any) -> tuple[str, ...]:
    """``[test]`` (default) or ``[validation, test]``: the test part always, in the split's order."""
    ok = isinstance(raw, list) and raw and all(isinstance(v, str) for v in raw) and len(set(raw)) == len(raw)
    if not ok or "test" not in raw or not set(raw) <= set(EVAL_PARTS):
        raise rd.error("evaluate_on", f"expected [test] or [validation, test], got {raw!r}")
    return tuple(p for p in ("validation", "test") if p in raw)


def _references(rd: _Reader, raw: Any) -> tuple[str | None, tuple[str, ...]]:
    """``reference: label`` or ``reference: [label, ...]``: the label of paired.md (None if absent) and
    the further labels."""
    if raw is None:
        return None, ()
    if not isinstance(raw, list):
        return rd.string(raw, "reference"), ()
    if not raw:
        raise rd.error("reference", "an empty list; give a method label or leave reference out")
    labels = tuple(rd.string(v, f"reference[{i}]") for i, v in enumerate(raw))
    if len(set(labels)) != len(labels):
        raise rd.error("reference", f"a label appears twice in {list(labels)}")
    return labels[0], labels[1:]


def _check_parts(rd: _Reader, spec: ExperimentSpec) -> None:
    """``reference`` names a method; nnU-Net runs predict the test part only."""
    labels = [m.label for m in spec.methods]
    for ref in (spec.reference, *spec.also_against):
        if ref is not None and ref not in labels:
            raise rd.error("reference", f"{ref!r} is not a method label (labels: {', '.join(labels)})")
    if "validation" in spec.evaluate_on:
        for i, m in enumerate(spec.methods):
            if m.nnunet is not None:
                raise rd.error(
                    f"methods[{i}]", "nnU-Net runs are scored on the test part only; drop validation"
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


def _methods(rd: _Reader, raw: Any, schedule: ScheduleSpec) -> tuple[MethodSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise rd.error("methods", f"expected a non-empty list of methods, got {raw!r}")
    methods = tuple(_method(rd, m, f"methods[{i}]", schedule) for i, m in enumerate(raw))
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


def _method(rd: _Reader, raw: Any, field: str, schedule: ScheduleSpec) -> MethodSpec:
    allowed = {"label", "network", "title", "overrides", "ablation", "nnunet"}
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
    nnunet = None
    if network == NNUNET:
        if overrides:
            raise rd.error(
                f"{field}.overrides", "nnU-Net does not read h2aseg's config; give its settings under nnunet:"
            )
        nnunet = _nnunet(rd, raw.get("nnunet"), f"{field}.nnunet", schedule)
    elif raw.get("nnunet") is not None:
        raise rd.error(f"{field}.nnunet", f"only network {NNUNET!r} takes nnunet settings, not {network!r}")
    default_title = THRESHOLD_METHODS.get(network, "nnU-Net" if network == NNUNET else label)
    title = rd.string(raw.get("title") or default_title, f"{field}.title")
    return MethodSpec(label, network, title, overrides, ablation, nnunet)


def _nnunet(rd: _Reader, raw: Any, field: str, schedule: ScheduleSpec) -> NnunetSettings:
    """The ``nnunet:`` mapping (every key optional); the trainer defaults to the schedule's."""
    names = {f.name for f in dataclasses.fields(NnunetSettings)}
    raw = rd.mapping({} if raw is None else raw, field, names)
    d = NnunetSettings()
    dataset_id = raw.get("dataset_id", d.dataset_id)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise rd.error(f"{field}.dataset_id", f"expected an integer from 1 to 999, got {dataset_id!r}")
    processes = raw.get("processes", d.processes)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise rd.error(f"{field}.processes", f"expected a positive integer, got {processes!r}")
    words = {}
    for key in ("configuration", "trainer", "planner", "plans"):
        default = NNUNET_TRAINERS.get(schedule.base, d.trainer) if key == "trainer" else getattr(d, key)
        value = rd.string(raw.get(key, default), f"{field}.{key}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise rd.error(f"{field}.{key}", f"{value!r} is not an nnU-Net name (letters, digits, _ . -)")
        words[key] = value
    return NnunetSettings(
        dataset_id=dataset_id,
        processes=processes,
        device=rd.choice(raw.get("device", d.device), f"{field}.device", NNUNET_DEVICES),
        tta=rd.boolean(raw.get("tta", d.tta), f"{field}.tta"),
        bin=rd.path(raw["bin"], f"{field}.bin") if raw.get("bin") is not None else None,
        **words,
    )


def _check_networks(rd: _Reader, methods: tuple[MethodSpec, ...]) -> None:
    """Every network is registered now (the registry is read at run time, not import time)."""
    from h2aseg.models import list_networks

    known = list_networks()
    for i, m in enumerate(methods):
        field = f"methods[{i}].network"
        if not m.training_free and m.nnunet is None and m.network not in known:
            raise rd.error(
                field,
                f"unknown network {m.network!r} (registered: {', '.join(known)}; "
                f"training-free: {', '.join(THRESHOLD_METHODS)}; nnU-Net v2: {NNUNET})",
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
        if m.training_free or m.nnunet is not None:
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
