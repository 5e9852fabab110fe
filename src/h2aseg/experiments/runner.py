"""The experiment loop: one split, then every (method, seed) run of this shard, then the tables and figures.

Each run: skip it when its done marker exists; else take its lock (skip it when another process holds a
live one; take over a stale one); measure the method's cost once; train (continuing a killed run from its
last checkpoint); predict the test split; evaluate; write the done marker; rewrite the tables from every
run done so far. A progress line per stage: ``run i/N: <label> seed S (training)``. A run that fails is
reported (its traceback in ``<run>/error.txt``) and the loop goes on; Ctrl-C stops the loop (the lock is
released, and the next invocation continues the run from its last checkpoint). An invocation that finished
a run (or finds no ``fig3.png``) ends by drawing Fig. 3 and Fig. 4 from the runs done so far
(:func:`~h2aseg.experiments.tables.write_figures`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from h2aseg.config import Config
from h2aseg.data.layouts import Case
from h2aseg.errors import InputError
from h2aseg.experiments import nnunet, steps
from h2aseg.experiments.locks import Heartbeat, RunLock
from h2aseg.experiments.plan import (
    Layout,
    Run,
    describe_status,
    missing_parts,
    plan_runs,
    read_done,
    same_config,
    select_shard,
)
from h2aseg.experiments.spec import ExperimentSpec
from h2aseg.experiments.tables import write_figures, write_tables
from h2aseg.files import atomic_write_text
from h2aseg.training.callbacks import TrainingCallbacks

Log = Callable[[str], None]
#: Extra training callbacks per run (e.g. a custom logger), after the runner's own.
RunCallbacks = Callable[[Run], Sequence[TrainingCallbacks]]


@dataclass
class ExperimentResult:
    """What an invocation did: run names by outcome, and the tables written."""

    total: int
    selected: int
    done: list[str] = field(default_factory=list)  # finished by this invocation
    skipped: list[str] = field(default_factory=list)  # done before
    locked: list[str] = field(default_factory=list)  # another process works on them
    failed: list[str] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)


@dataclass
class _Context:
    spec: ExperimentSpec
    layout: Layout
    cases: dict[str, list[Case]]  # per evaluate_on part
    total: int
    progress: bool
    log: Log
    callbacks: RunCallbacks | None


def run_experiment(
    spec: ExperimentSpec,
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    log: Log = print,
    callbacks: RunCallbacks | None = None,
    tables_only: bool = False,
) -> ExperimentResult:
    """Run this shard's runs of ``spec`` into ``out`` (see the module docstring); safe to rerun.
    ``tables_only``: run nothing, only rewrite the tables and redraw the figures from the runs done (after
    shards on other machines were copied together, or after processes were stopped at a deadline)."""
    layout = Layout(Path(out))
    if tables_only and not layout.split.is_file():  # read-only: nothing is written where nothing ran
        raise InputError(f"{layout.out}: no split.json, so no run of this experiment has been done there")
    parts = steps.prepare_data(spec, layout)  # checks the dataset before writing anything
    if not tables_only:
        atomic_write_text(layout.out / "experiment.yaml", spec.source.read_text(encoding="utf-8"))
    runs = plan_runs(spec)
    selected = select_shard(runs, shard)
    ctx = _Context(spec, layout, parts, len(runs), progress, log, callbacks)
    result = ExperimentResult(total=len(runs), selected=len(selected))
    for run in [] if tables_only else selected:
        outcome = _one_run(ctx, run)
        getattr(result, outcome).append(run.name)
    if any(read_done(layout, r) for r in runs):
        result.tables = write_tables(spec, layout)
        if tables_only or result.done or not (layout.out / "fig3.png").exists():  # Fig. 3, Fig. 4 beside
            val = parts.get("validation")
            result.tables += write_figures(spec, layout, parts["test"], log, validation=val)
    return result


def _one_run(ctx: _Context, run: Run) -> str:
    """One run under its lock; the outcome: done | skipped | locked | failed."""
    spec, layout = ctx.spec, ctx.layout
    prefix = f"run {run.index}/{ctx.total}: {run.name}"
    cfg = spec.run_config(run.method, run.seed, layout.out)
    if _complete(ctx, run):
        ctx.log(f"{prefix} (done, skipped{_changed_note(layout, run, cfg)})")
        return "skipped"
    lock = RunLock(layout.lock(run), spec.lock_timeout_s)
    holder = lock.acquire()
    if holder is not None:
        ctx.log(f"{prefix} (locked by {holder.describe()}, skipped)")
        return "locked"
    if lock.took_over:
        ctx.log(f"{prefix}: took over a stale lock ({lock.took_over})")
    heartbeat = Heartbeat(lock, min(60.0, spec.lock_timeout_s / 4)).start()
    try:
        if _complete(ctx, run):  # finished by another process just before we got the lock
            ctx.log(f"{prefix} (done, skipped)")
            return "skipped"
        if read_done(layout, run) is not None:  # done before validation scores were asked for
            _score(ctx, run, cfg, heartbeat, prefix, missing_parts(spec, layout, run))
        else:
            _work(ctx, run, cfg, heartbeat, prefix)
    except Exception as e:
        _record_failure(layout.run_dir(run), e)
        where = layout.run_dir(run) / "error.txt"
        ctx.log(f"{prefix} (failed: {type(e).__name__}: {e}; traceback in {where})")
        return "failed"
    finally:
        heartbeat.stop()
        lock.release()
    write_tables(spec, layout)
    return "done"


def _work(ctx: _Context, run: Run, cfg: Config, heartbeat: Heartbeat, prefix: str) -> None:
    """Train (network methods and nnU-Net), predict and evaluate each ``evaluate_on`` part, mark done."""
    spec, layout = ctx.spec, ctx.layout
    run_dir = layout.run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = "training-free"
    nn = run.method.nnunet
    if nn is not None:
        ctx.log(f"{prefix} (nnU-Net: {nn.trainer}, {nn.configuration}; training)")
        nnunet.prepare(spec, layout, nn, run_dir, heartbeat, ctx.log)
        trained = nnunet.train(layout, nn, run_dir, heartbeat)
    elif not run.method.training_free:
        ctx.log(f"{prefix} (training)")
        steps.ensure_cost(spec, layout, run, cfg)
        extra = ctx.callbacks(run) if ctx.callbacks else ()
        trained = steps.train_network(cfg, run_dir, heartbeat, progress=ctx.progress, callbacks=extra)
    summary = _score(ctx, run, cfg, heartbeat, prefix, list(spec.evaluate_on))
    heartbeat.beat(force=True)  # raises if another process took the run over meanwhile
    steps.write_done(layout, run, cfg, summary, trained)
    (run_dir / "error.txt").unlink(missing_ok=True)
    ctx.log(f"{prefix} (done)")


def _score(ctx: _Context, run: Run, cfg: Config, heartbeat: Heartbeat, prefix: str, parts: list[str]) -> dict:
    """Predict and evaluate each of ``parts``; the test part's summary (``{}`` when not among them).
    Prediction time (``timing.json``) is recorded for the test part."""
    layout, nn = ctx.layout, run.method.nnunet
    run_dir = layout.run_dir(run)
    summaries: dict[str, dict] = {}
    for part in parts:
        cases, out = ctx.cases[part], layout.predictions(run, part)
        where = "" if part == "test" else f" the {part} part"
        ctx.log(f"{prefix} (predicting{where})")
        if nn is not None:
            seconds = nnunet.predict(layout, nn, run_dir, cases, heartbeat)
        elif run.method.training_free:
            seconds = steps.predict_threshold(run.method.network, cfg, layout.cache, cases, out, heartbeat)
        else:
            seconds = steps.predict_network(run_dir, cases, out, heartbeat, record=part == "test")
        if part == "test":
            steps.save_timing(run_dir, seconds)
        ctx.log(f"{prefix} (evaluating{where})")
        summaries[part] = steps.evaluate_run(ctx.spec, layout, run, heartbeat, part)
    return summaries.get("test", {})


def _complete(ctx: _Context, run: Run) -> bool:
    """Done, and scored on every part the experiment asks for."""
    return read_done(ctx.layout, run) is not None and not missing_parts(ctx.spec, ctx.layout, run)


def _changed_note(layout: Layout, run: Run, cfg: Config) -> str:
    if same_config(read_done(layout, run) or {}, cfg, run.method, layout.run_dir(run)):
        return ""
    return f"; made with a different config, delete {layout.run_dir(run)} to redo it"


def _record_failure(run_dir: Path, exc: BaseException) -> None:
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        atomic_write_text(run_dir / "error.txt", text)
    except OSError:
        pass


def plan_lines(spec: ExperimentSpec, out: str | Path, shard: tuple[int, int] = (0, 1)) -> list[str]:
    """The dry run: every run of this shard and whether it is done, locked or pending."""
    layout = Layout(Path(out))
    runs = plan_runs(spec)
    selected = select_shard(runs, shard)
    split = "reused" if layout.split.exists() else "made on the first run"
    lines = [
        f"experiment {spec.name}: {len(runs)} runs ({sum(m.training_free for m in spec.methods)} "
        f"training-free, {len(runs) - sum(m.training_free for m in spec.methods)} trained: "
        f"{sum(not m.training_free for m in spec.methods)} network methods x {len(spec.seeds)} seeds); "
        f"shard {shard[0]}/{shard[1]} takes {len(selected)}",
        f"output {layout.out}; split {layout.split} ({split}); schedule {spec.schedule.base}",
    ]
    lines += [f"run {r.index}/{len(runs)}: {r.name}: {describe_status(spec, layout, r)}" for r in selected]
    return lines
