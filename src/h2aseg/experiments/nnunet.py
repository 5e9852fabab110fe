"""nnU-Net v2 as a method of an experiment: its own commands on an export of the experiment's split.

nnU-Net is not re-implemented or imported: the run calls its command-line tools, as a user would
(``docs/nnunet.md``), with the environment variables pointing into the experiment's output folder:

1. **Export and plan** (once per experiment and nnU-Net pipeline, shared by its seeds, under
   ``nnunet/prepare-<id>.lock``): :func:`~h2aseg.data.nnunet_export.export_dataset` writes the dataset with
   the experiment's ``split.json`` as fold 0 into ``nnunet/raw``, then ``nnUNetv2_plan_and_preprocess -d ID
   -c CONFIG -pl PLANNER --verify_dataset_integrity`` fills ``nnunet/preprocessed``; a marker file records
   that it finished, so a rerun skips it.
2. **Train** ``nnUNetv2_train ID CONFIG 0 -tr TRAINER -p PLANS -device DEV --c`` with ``nnUNet_results``
   in the run's own folder, so seeds never share a model; ``--c`` continues a killed run from nnU-Net's
   last checkpoint (nnU-Net writes one every 50 epochs and at the end). nnU-Net has no seed option: the
   seeds of an nnunet method are independent trainings that differ by nnU-Net's own randomness.
3. **Predict** the test part (``imagesTs``) with ``nnUNetv2_predict ... -f 0 --c`` into ``nnunet_pred/``,
   then copy each mask to ``predictions/<case id>.nii.gz`` so the runner evaluates it like any method.

Each command's output goes to ``nnunet_<stage>.log`` in the run folder; a failing command raises
:class:`NnunetError` with the command and the end of its log. While a command runs, the run's lock is
kept fresh and a lost lock stops the command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import IO

from h2aseg.data.layouts import Case
from h2aseg.data.nnunet_export import CASES_FILE, dataset_folder_name, export_dataset, load_case_map
from h2aseg.errors import H2ASegError
from h2aseg.experiments.locks import Heartbeat, RunLock
from h2aseg.experiments.plan import Layout
from h2aseg.experiments.spec import ExperimentSpec, NnunetSettings
from h2aseg.files import atomic_write, atomic_write_text, read_json

Log = Callable[[str], None]
COMMANDS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict")
POLL_S = 2.0  # how often a running command's lock is refreshed
LOG_TAIL = 20  # lines of a failed command's log in the error


class NnunetError(H2ASegError):
    """nnU-Net could not run (commands missing, a command failed, an output missing); the message says
    which command or file."""


# ------------------------------------------------------------------------------------------- commands
def find_commands(settings: NnunetSettings) -> dict[str, Path]:
    """The nnUNetv2_* commands: in ``settings.bin`` when set, else beside this Python, else on PATH."""
    place = settings.bin if settings.bin is not None else Path(sys.executable).parent
    found: dict[str, Path] = {}
    for name in COMMANDS:
        candidate = place / name
        hit = candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None
        if hit is None and settings.bin is None:
            which = shutil.which(name)
            hit = Path(which) if which else None
        if hit is None:
            where = (
                f"in nnunet.bin ({settings.bin})"
                if settings.bin is not None
                else f"beside {sys.executable} or on PATH"
            )
            raise NnunetError(
                f"nnU-Net's command {name} was not found {where}: install nnU-Net v2 (`pip install -e "
                "'.[nnunet]'`, or a separate environment as in docs/nnunet.md) and give its bin folder as "
                "the method's nnunet.bin"
            )
        found[name] = hit
    return found


def resolve_device(settings: NnunetSettings) -> str:
    """``auto``: cuda when this process sees a GPU, else cpu."""
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def environment(layout: Layout, results: Path, settings: NnunetSettings) -> dict[str, str]:
    """This process's environment with nnU-Net's three folders (and worker counts, unless set)."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(layout.nnunet_raw.resolve()),
        nnUNet_preprocessed=str(layout.nnunet_preprocessed.resolve()),
        nnUNet_results=str(results.resolve()),
    )
    env.setdefault("nnUNet_n_proc_DA", str(settings.processes))
    return env


def run_command(
    cmd: Sequence[str | Path], env: dict[str, str], log_path: Path, heartbeat: Heartbeat | None
) -> float:
    """Run ``cmd`` with its output appended to ``log_path``; the lock is refreshed meanwhile. Returns its
    wall-clock seconds; raises :class:`NnunetError` (with the log's end) when it fails."""
    args = [str(c) for c in cmd]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(  # its own process group: stopping it stops nnU-Net's worker processes too
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(proc, heartbeat, log)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise NnunetError(
            f"{Path(args[0]).name} failed (exit status {proc.returncode}); its output is in {log_path}:\n"
            + _tail(log_path)
        )
    return seconds


def _wait(proc: subprocess.Popen, heartbeat: Heartbeat | None, log: IO[str]) -> None:
    """Wait for ``proc``, beating the heartbeat; stop it when the lock is lost or on Ctrl-C."""
    try:
        while True:
            try:
                proc.wait(timeout=POLL_S)
                return
            except subprocess.TimeoutExpired:
                if heartbeat is not None:
                    heartbeat.beat()
    except BaseException:
        log.write("\n[h2aseg] stopping the command and its workers\n")
        _signal_group(proc, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        _signal_group(proc, signal.SIGKILL)  # workers that outlived their parent
        proc.wait()
        raise


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tail(path: Path, n: int = LOG_TAIL) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------------------------------- stages
def dataset_dir(layout: Layout, settings: NnunetSettings) -> Path:
    """The export's folder inside the experiment's ``nnunet/raw``."""
    return layout.nnunet_raw / dataset_folder_name(settings.dataset_id)


def prepare(
    spec: ExperimentSpec,
    layout: Layout,
    settings: NnunetSettings,
    run_dir: Path,
    heartbeat: Heartbeat | None,
    log: Log,
) -> None:
    """Export the dataset with the experiment's split and plan + preprocess it, once (see module doc)."""
    tag = f"{settings.dataset_id}-{settings.planner}-{settings.configuration}"
    marker = layout.out / "nnunet" / f"prepared-{tag}.json"
    if marker.is_file():
        return
    commands = find_commands(settings)
    with _exclusive(layout.out / "nnunet" / f"prepare-{settings.dataset_id}.lock", spec, heartbeat):
        if marker.is_file():  # another process prepared it while we waited
            return
        data = replace(spec.base_config().data, split_file=str(layout.split))
        log(f"nnU-Net: exporting the dataset to {dataset_dir(layout, settings)}")
        export_dataset(data, layout.nnunet_raw, settings.dataset_id, preprocessed=layout.nnunet_preprocessed)
        log(f"nnU-Net: planning and preprocessing ({settings.planner}, {settings.configuration})")
        np_ = str(settings.processes)
        cmd = [
            commands["nnUNetv2_plan_and_preprocess"], "-d", str(settings.dataset_id),
            "-c", settings.configuration, "-pl", settings.planner,
            "-np", np_, "-npfp", np_, "--verify_dataset_integrity",
        ]  # fmt: skip
        env = environment(layout, run_dir / "nnUNet_results", settings)
        seconds = run_command(cmd, env, layout.out / "nnunet" / f"prepare-{tag}.log", heartbeat)
        plans = layout.nnunet_preprocessed / dataset_dir(layout, settings).name / f"{settings.plans}.json"
        if not plans.is_file():
            raise NnunetError(
                f"{plans}: not written by {settings.planner}; nnunet.plans must name the plans this "
                "planner writes (e.g. nnUNetPlans for ExperimentPlanner)"
            )
        keys = ("dataset_id", "planner", "configuration", "plans")
        doc = {**{k: getattr(settings, k) for k in keys}, "seconds": round(seconds, 1)}
        atomic_write_text(marker, json.dumps(doc, indent=2) + "\n")


@contextmanager
def _exclusive(path: Path, spec: ExperimentSpec, heartbeat: Heartbeat | None) -> Iterator[None]:
    """Hold ``path``'s lock (waiting while another live process holds it), with its own heartbeat."""
    lock = RunLock(path, spec.lock_timeout_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    while lock.acquire() is not None:
        if heartbeat is not None:
            heartbeat.beat()
        time.sleep(POLL_S)
    own = Heartbeat(lock, min(60.0, spec.lock_timeout_s / 4)).start()
    try:
        yield
    finally:
        own.stop()
        lock.release()


def model_dir(run_dir: Path, layout: Layout, settings: NnunetSettings) -> Path:
    """nnU-Net's fold-0 folder of this run: ``nnUNet_results/DatasetNNN/TRAINER__PLANS__CONFIG/fold_0``."""
    name = f"{settings.trainer}__{settings.plans}__{settings.configuration}"
    return run_dir / "nnUNet_results" / dataset_dir(layout, settings).name / name / "fold_0"


def train(layout: Layout, settings: NnunetSettings, run_dir: Path, heartbeat: Heartbeat | None) -> str:
    """Train fold 0 (continuing a killed training); what was done. Writes ``finished.json`` (seconds)."""
    final = model_dir(run_dir, layout, settings) / "checkpoint_final.pth"
    state = run_dir / "nnunet_state.json"
    if final.is_file():
        if not (run_dir / "finished.json").is_file():  # killed right after nnU-Net finished
            _write_finished(run_dir, _train_seconds(state), settings, final)
        return "already trained"
    commands = find_commands(settings)
    resumed = (final.parent / "checkpoint_latest.pth").is_file()
    cmd = [
        commands["nnUNetv2_train"], str(settings.dataset_id), settings.configuration, "0",
        "-tr", settings.trainer, "-p", settings.plans, "-device", resolve_device(settings), "--c",
    ]  # fmt: skip
    env = environment(layout, run_dir / "nnUNet_results", settings)
    before = _train_seconds(state) or 0.0
    start = time.perf_counter()
    try:
        run_command(cmd, env, run_dir / "nnunet_train.log", heartbeat)
    finally:  # a killed training's time still counts
        spent = before + time.perf_counter() - start
        atomic_write_text(state, json.dumps({"train_seconds": round(spent, 3)}, indent=2) + "\n")
    if not final.is_file():
        raise NnunetError(f"{final}: nnUNetv2_train ended without it (see {run_dir / 'nnunet_train.log'})")
    _write_finished(run_dir, spent, settings, final)
    return "trained" if not resumed else "resumed from nnU-Net's last checkpoint"


def _write_finished(run_dir: Path, seconds: float | None, settings: NnunetSettings, final: Path) -> None:
    """``finished.json`` as h2aseg's trainer writes it (the cost table reads ``seconds``; null when the
    training time is unknown, and the table leaves that run out of its mean)."""
    doc = {
        "seconds": None if seconds is None else round(seconds, 3),
        "trainer": settings.trainer,
        "checkpoint": str(final),
    }
    atomic_write_text(run_dir / "finished.json", json.dumps(doc, indent=2) + "\n")


def predict(
    layout: Layout,
    settings: NnunetSettings,
    run_dir: Path,
    cases: list[Case],
    heartbeat: Heartbeat | None,
) -> list[float]:
    """Predict the test part, then ``predictions/<case id>.nii.gz``; seconds per case (nnU-Net predicts
    every case in one process: its wall time over the cases it predicted, the same for each)."""
    commands = find_commands(settings)
    folder = dataset_dir(layout, settings)
    case_ids = load_case_map(folder / CASES_FILE)
    by_case = {cid: ident for ident, cid in case_ids.items()}
    missing = [c.case_id for c in cases if c.case_id not in by_case]
    if missing:
        raise NnunetError(f"{folder / CASES_FILE}: test case(s) not exported: {', '.join(missing)}")
    raw_pred = run_dir / "nnunet_pred"
    todo = [c for c in cases if not (run_dir / "predictions" / f"{c.case_id}.nii.gz").is_file()]
    pending = [c for c in todo if not (raw_pred / f"{by_case[c.case_id]}.nii.gz").is_file()]
    seconds = 0.0
    if pending:
        np_ = str(settings.processes)
        cmd = [
            commands["nnUNetv2_predict"], "-i", folder / "imagesTs", "-o", raw_pred,
            "-d", str(settings.dataset_id), "-c", settings.configuration, "-f", "0",
            "-tr", settings.trainer, "-p", settings.plans, "-device", resolve_device(settings),
            "-npp", np_, "-nps", np_, "--continue_prediction",
            *([] if settings.tta else ["--disable_tta"]),
        ]  # fmt: skip
        env = environment(layout, run_dir / "nnUNet_results", settings)
        seconds = run_command(cmd, env, run_dir / "nnunet_predict.log", heartbeat)
    for c in todo:
        src = raw_pred / f"{by_case[c.case_id]}.nii.gz"
        if not src.is_file():
            raise NnunetError(f"{src}: nnUNetv2_predict wrote no mask for case {c.case_id}")
        target = run_dir / "predictions" / f"{c.case_id}.nii.gz"
        atomic_write(target, lambda tmp, s=src: shutil.copyfile(s, tmp))
    return [seconds / len(pending)] * len(pending) if pending else []


def _train_seconds(state: Path) -> float | None:
    """nnUNetv2_train wall time of earlier invocations (``nnunet_state.json``); None when it was not
    recorded (no invocation yet, or one killed without a chance to write it)."""
    doc = read_json(state)
    value = doc.get("train_seconds") if isinstance(doc, dict) else None
    return float(value) if value is not None else None
