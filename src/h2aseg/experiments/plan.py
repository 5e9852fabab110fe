"""The runs of an experiment, which shard takes which, where each one writes, and how far each has got.

Output folder (``--out DIR``)::

    experiment.yaml              the experiment file of the last invocation
    split.json                   the one patient-level split every run uses (data.split_file)
    test_cases.csv               the test cases (ground truth for the evaluation)
    validation_cases.csv         the validation cases, when the experiment's evaluate_on names them
    cache/                       preprocessed cases, shared by all runs
    runs/<label>/seed<N>/        a trained run: the training run folder (config.yaml, checkpoints/,
                                 metrics.csv, tb/, finished.json), predictions/, evaluation/,
                                 timing.json, done.json (written last, atomically); with
                                 evaluate_on [validation, test] also predictions-val/, evaluation-val/
    runs/<label>/fixed/          a training-free method (SUV thresholds): predictions/, evaluation/, done.json
    runs/<label>/seed<N>/        an nnunet run: nnUNet_results/ (its own), nnunet_pred/ (its output,
                                 named by nnU-Net identifiers), predictions/ (the same masks by case id),
                                 nnunet_*.log, evaluation/, timing.json, finished.json, done.json
    nnunet/raw/, nnunet/preprocessed/   the export of the dataset (the split above) and nnU-Net's plans
                                 and preprocessed data, shared by every nnunet run
    runs/<label>/seed<N>.lock    the run's lock while a process works on it
    cost/<label>.json            parameters, GFLOP, train-step time and memory of a network method
    table1.md/.tex/.json, table2.md, cost.md, paired.md/.json (with a reference method)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2aseg.config import Config
from h2aseg.errors import InputError
from h2aseg.experiments.spec import ExperimentSpec, MethodSpec
from h2aseg.files import read_json, read_yaml_file
from h2aseg.models.naming import one_spelling

#: The folder suffix of each ``evaluate_on`` part inside a run (``predictions-val/``, ``evaluation-val/``).
PART_SUFFIX = {"test": "", "validation": "-val"}


@dataclass(frozen=True)
class Run:
    """One (method, seed) run; ``seed`` is None for a training-free method; ``index`` counts from 1."""

    index: int
    method: MethodSpec
    seed: int | None

    @property
    def name(self) -> str:
        return f"{self.method.label} seed {'-' if self.seed is None else self.seed}"


@dataclass(frozen=True)
class Layout:
    """Paths inside an experiment's output folder."""

    out: Path

    @property
    def split(self) -> Path:
        return self.out / "split.json"

    @property
    def manifest(self) -> Path:
        return self.out / "test_cases.csv"

    def manifest_of(self, part: str) -> Path:
        """The ground-truth manifest of an ``evaluate_on`` part (``test`` or ``validation``)."""
        return self.manifest if part == "test" else self.out / f"{part}_cases.csv"

    def predictions(self, run: Run, part: str = "test") -> Path:
        return self.run_dir(run) / f"predictions{PART_SUFFIX[part]}"

    def evaluation(self, run: Run, part: str = "test") -> Path:
        return self.run_dir(run) / f"evaluation{PART_SUFFIX[part]}"

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    def run_dir(self, run: Run) -> Path:
        leaf = "fixed" if run.seed is None else f"seed{run.seed}"
        return self.out / "runs" / run.method.label / leaf

    def lock(self, run: Run) -> Path:
        d = self.run_dir(run)
        return d.with_name(d.name + ".lock")

    def done(self, run: Run) -> Path:
        return self.run_dir(run) / "done.json"

    def cost(self, method: MethodSpec) -> Path:
        return self.out / "cost" / f"{method.label}.json"

    @property
    def tables_lock(self) -> Path:
        return self.out / "tables.lock"

    @property
    def nnunet_raw(self) -> Path:
        return self.out / "nnunet" / "raw"

    @property
    def nnunet_preprocessed(self) -> Path:
        return self.out / "nnunet" / "preprocessed"


def plan_runs(spec: ExperimentSpec) -> list[Run]:
    """Training-free methods first (seconds each), then seed by seed every network method, so that a
    table with one seed per method exists early."""
    order: list[tuple[MethodSpec, int | None]] = [(m, None) for m in spec.methods if m.training_free]
    order += [(m, s) for s in spec.seeds for m in spec.methods if not m.training_free]
    return [Run(i + 1, m, s) for i, (m, s) in enumerate(order)]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard: expected I/N (e.g. 0/2), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard: expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def select_shard(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    """Every N-th run starting at the I-th (0-based): shards 0/N ... N-1/N cover every run once."""
    i, n = shard
    return [r for k, r in enumerate(runs) if k % n == i]


#: Config fields that do not change a run's result (where its files are, loader workers, memory kept).
NOT_RESULT = ("root", "split_file", "cache_dir", "memory_cache_gb", "num_workers")


def fingerprint(cfg: Config, method: MethodSpec) -> str:
    """A hash of what determines a run's result (not where its files are; only the data settings for a
    training-free method, and those plus the nnU-Net settings for nnU-Net)."""
    d = cfg.to_dict()
    for key in NOT_RESULT:
        d["data"].pop(key, None)
    if method.training_free:
        d = {"data": d["data"]}
    elif method.nnunet is not None:
        d = {"data": d["data"], "nnunet": method.nnunet.identity()}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _result_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: {f: v for f, v in sec.items() if f not in NOT_RESULT}
        for k, sec in cfg.items()
        if isinstance(sec, dict)
    }
    if "model" in out:
        out["model"] = one_spelling(out["model"])
    return out


def same_config(done: dict[str, Any], cfg: Config, method: MethodSpec, run_dir: Path) -> bool:
    """Whether a done run was made with ``cfg``: its fingerprint matches, or (a field added to the config
    since then changes every fingerprint) its stored ``config.yaml`` equals ``cfg`` in every field it has,
    and every field it lacks is at its default in ``cfg``."""
    if done.get("fingerprint") in (None, fingerprint(cfg, method)):
        return True
    stored_file = run_dir / "config.yaml"
    if not stored_file.is_file():
        return False
    stored = read_yaml_file(stored_file, InputError, "run config")
    if not isinstance(stored, dict):
        return False
    now, default = _result_dict(cfg.to_dict()), _result_dict(Config().to_dict())
    then = _result_dict(stored)
    for section, fields in now.items():
        for field, value in fields.items():
            if field in then.get(section, {}):
                if then[section][field] != value:
                    return False
            elif value != default.get(section, {}).get(field):
                return False
    return True


def read_done(layout: Layout, run: Run) -> dict[str, Any] | None:
    """The run's done marker, or None when the run is not finished (or its marker is unreadable)."""
    doc = read_json(layout.done(run))
    return doc if isinstance(doc, dict) else None


def missing_parts(spec: ExperimentSpec, layout: Layout, run: Run) -> list[str]:
    """The ``evaluate_on`` parts the run has no evaluation summary of yet (a run done before the
    experiment asked for validation scores lacks ``validation``)."""
    return [p for p in spec.evaluate_on if not (layout.evaluation(run, p) / "summary.json").is_file()]


def describe_status(spec: ExperimentSpec, layout: Layout, run: Run) -> str:
    """done | done (config changed) | locked by ... | pending (resumes from epoch k, or nnU-Net
    continues) | pending."""
    from h2aseg.experiments.locks import RunLock, stale_reason

    done = read_done(layout, run)
    if done is not None:
        cfg = spec.run_config(run.method, run.seed, layout.out)
        if not same_config(done, cfg, run.method, layout.run_dir(run)):
            return "done (made with a different config; delete its folder to redo it)"
        missing = missing_parts(spec, layout, run)
        return f"done; scoring of {', '.join(missing)} pending" if missing else "done"
    lock = RunLock(layout.lock(run), spec.lock_timeout_s)
    info = lock.read()
    if info is not None:
        reason = stale_reason(info, spec.lock_timeout_s)
        if reason is None:
            return f"locked by {info.describe()}"
        pending = f"pending (stale lock: {reason})"
    else:
        pending = "pending"
    if run.method.nnunet is not None and (layout.run_dir(run) / "nnunet_state.json").exists():
        return pending + ", nnU-Net's training continues from its latest checkpoint (--c)"
    metrics = layout.run_dir(run) / "metrics.csv"
    if metrics.exists():
        epochs = max(0, len(metrics.read_text(encoding="utf-8").splitlines()) - 1)
        pending += f", resumes after epoch {epochs}"
    return pending
