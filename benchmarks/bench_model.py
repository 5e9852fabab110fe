"""Speed and memory of the H2ASeg network on this machine; prints one table.

Rows: paper variant, released variant, and the einsum (non-fused) attention path, in fp32 and bf16
autocast. Columns: parameters, forward GFLOP (PyTorch's FlopCounterMode), eval-forward time and peak
memory at 128x128x64 (batch 1), a training step (forward, eq. 5 loss, backward, Adam step) at the
paper's setting of 2 cases x 2 crops (batch 4) of 128x128x64 with its time and peak memory, and the
achieved GFLOP/s of the eval forward.

The row "authors' code" measures the authors' released implementation side by side with ours, when it is
importable (it is not shipped): ``H2ASEG_AUTHORS_CODE`` names the folder of their repository (put on
``sys.path``) and ``H2ASEG_AUTHORS_MODEL`` the class as ``module.path:ClassName``; the class is built with the
keyword arguments of ``--authors-kwargs JSON`` or else ``H2ASEG_AUTHORS_KWARGS`` (a JSON object, e.g.
``{"patch_size": [128, 128, 64], "in_channels": 1, "n_classes": 2}``; none: its constructor defaults) and
called as ``model(ct, pet)``. JSON values are passed as they are (a list stays a list: nothing is turned
into a tuple). The line under the table gives the released variant's fp32 eval-forward speed-up over it.

Each measurement runs in a fresh subprocess so that peak memory (max RSS on CPU, max allocated on CUDA)
belongs to that configuration alone. Usage::

    python benchmarks/bench_model.py [--size 128 128 64] [--batch 4] [--rows paper,released,...]
        [--authors-kwargs '{"patch_size": [128, 128, 64], "in_channels": 1, "n_classes": 2}']
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from h2aseg.errors import H2ASegError

if TYPE_CHECKING:
    import torch

AUTHORS_ROW = "authors' code"
AUTHORS_CODE_ENV = "H2ASEG_AUTHORS_CODE"
AUTHORS_MODEL_ENV = "H2ASEG_AUTHORS_MODEL"
AUTHORS_KWARGS_ENV = "H2ASEG_AUTHORS_KWARGS"
AUTHORS_KWARGS_FLAG = "--authors-kwargs"

ROWS = {
    "paper": {"variant": "paper"},
    "paper (MCSA at levels 2-5)": {"variant": "paper", "mcsa_levels": (2, 3, 4, 5)},
    "released": {"variant": "released"},
    "released, einsum attention": {"variant": "released", "attention": "reference"},
    "paper, einsum attention": {"variant": "paper", "attention": "reference"},
    AUTHORS_ROW: {"authors": True},
}


def authors_kwargs(flag: str | None = None) -> tuple[dict[str, Any], str]:
    """The authors' constructor keyword arguments, from ``flag`` (the value of ``--authors-kwargs``) or else
    ``H2ASEG_AUTHORS_KWARGS``, and the name of where they came from (for messages); ``{}`` when neither."""
    source = AUTHORS_KWARGS_FLAG if flag is not None else AUTHORS_KWARGS_ENV
    text = flag if flag is not None else os.environ.get(AUTHORS_KWARGS_ENV, "")
    if not text.strip():
        return {}, source
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise H2ASegError(f"{source}: not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise H2ASegError(
            f"{source}: must be a JSON object of keyword arguments, e.g. '{{\"in_channels\": 1}}'"
        )
    return value, source


def authors_class() -> type:
    """The authors' class named by ``H2ASEG_AUTHORS_MODEL``, imported from the folder
    ``H2ASEG_AUTHORS_CODE``."""
    import importlib

    folder, spec = os.environ.get(AUTHORS_CODE_ENV), os.environ.get(AUTHORS_MODEL_ENV)
    if not folder or not spec or ":" not in spec:
        raise RuntimeError(
            f"not importable: set {AUTHORS_CODE_ENV}=<folder of their repository> and "
            f"{AUTHORS_MODEL_ENV}=<module.path:ClassName>"
        )
    if not os.path.isdir(folder):
        raise RuntimeError(f"{AUTHORS_CODE_ENV}={folder} is not a folder")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name, class_name = spec.split(":", 1)
    return getattr(importlib.import_module(module_name), class_name)


def check_authors_kwargs(cls: type, kwargs: dict[str, Any], source: str) -> None:
    """Before any row runs: the keyword arguments fit the constructor's signature (missing or unknown ones
    are a one-line error naming ``source``)."""
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise H2ASegError(f"{source}: {_rejected(cls, kwargs, e)}") from None
    except ValueError:  # no signature to check (a builtin): the constructor call will tell
        return


def _rejected(cls: type, kwargs: dict[str, Any], error: TypeError) -> str:
    detail = " ".join(str(error).split())
    return f"{cls.__name__}({', '.join(kwargs)}) rejected: {detail}"


def build_authors_model(
    kwargs: dict[str, Any] | None = None, source: str = AUTHORS_KWARGS_ENV
) -> torch.nn.Module:
    """The authors' network from the folder and class named by the environment (see the module docstring),
    built with ``kwargs`` (default: from ``H2ASEG_AUTHORS_KWARGS``), behind a ``(B, 2, X, Y, Z)`` ->
    ``model(ct, pet)`` adapter (channel 0 CT, channel 1 PET)."""
    import torch

    if kwargs is None:
        kwargs, source = authors_kwargs()
    cls = authors_class()
    try:
        inner = cls(**kwargs)
    except TypeError as e:
        raise H2ASegError(f"{source}: {_rejected(cls, kwargs, e)}") from None

    class TwoInputs(torch.nn.Module):
        out_channels = 2  # the released code's two softmax classes

        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> object:
            return self.model(x[:, :1], x[:, 1:2])

    return TwoInputs()


def _measure(kwargs: dict, size: list[int], batch: int, precision: str, checkpointing: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from h2aseg.models import build_network
    from h2aseg.training.losses import DeepSupervisedDiceCE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if kwargs.get("authors"):
        net = build_authors_model(
            kwargs.get("authors_kwargs"), kwargs.get("authors_source", AUTHORS_KWARGS_ENV)
        )
    else:
        net = build_network("h2aseg", **kwargs)
    net = net.to(device)
    if checkpointing:
        net.gradient_checkpointing = [int(v) for v in checkpointing.split(",")]
    params = sum(p.numel() for p in net.parameters())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    x = torch.randn(1, 2, *size, device=device)
    net.eval()
    with torch.no_grad(), autocast:
        flops = FlopCounterMode(display=False)
        with flops:
            net(x)
        net(x)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        reps = 2
        for _ in range(reps):
            net(x)
        sync()
        eval_s = (time.perf_counter() - t0) / reps
    eval_mem = _peak_gb(device)
    result = {"params": params, "gflop": flops.get_total_flops() / 1e9, "eval_s": eval_s, "eval_gb": eval_mem}
    if batch > 0:
        net.train()
        loss_fn = DeepSupervisedDiceCE(net.out_channels)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5)
        xb = torch.randn(batch, 2, *size, device=device)
        yb = (torch.rand(batch, 1, *size, device=device) > 0.98).long()
        times = []
        for _ in range(2):  # first step warms up allocators and Adam state
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast:
                outs = net(xb)
            loss = loss_fn(outs, yb)
            loss.backward()
            opt.step()
            sync()
            times.append(time.perf_counter() - t0)
        result.update({"train_s": times[-1], "train_gb": _peak_gb(device)})
    return result


def _peak_gb(device: object) -> float:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=[128, 128, 64])
    ap.add_argument("--batch", type=int, default=4, help="training-step batch (0 skips the training step)")
    default_rows = [r for r in ROWS if r != AUTHORS_ROW or os.environ.get(AUTHORS_CODE_ENV)]
    ap.add_argument("--rows", default=",".join(default_rows), help="comma-separated row names")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument(
        "--checkpointing",
        nargs="?",
        const="1,2,3,4,5",
        default="",
        help="activation checkpointing in training: every level, or the levels given (e.g. 1)",
    )
    ap.add_argument(
        AUTHORS_KWARGS_FLAG,
        metavar="JSON",
        help=f"keyword arguments of the authors' constructor, a JSON object passed as it is (default: "
        f"${AUTHORS_KWARGS_ENV}, else none)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    try:
        row_kwargs = _row_kwargs(rows, args.authors_kwargs)
    except H2ASegError as e:
        sys.exit(f"bench_model.py: error: {e}")

    import torch
    from rich.console import Console
    from rich.table import Table

    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    threads = torch.get_num_threads()
    table = Table(
        title=f"H2ASeg at {'x'.join(map(str, args.size))}, eval batch 1, train batch {args.batch} "
        f"({device}, {threads} threads, torch {torch.__version__})"
    )
    columns = ("model", "precision", "params (M)", "GFLOP", "eval s", "eval GB", "GFLOP/s")
    columns += ("train s", "train GB")
    for col in columns:
        table.add_column(col, justify="right" if col not in ("model", "precision") else "left")
    eval_fp32: dict[str, float] = {}
    for name in rows:
        if name == AUTHORS_ROW and not os.environ.get(AUTHORS_CODE_ENV):
            table.add_row(name, "-", f"not importable: set {AUTHORS_CODE_ENV} and {AUTHORS_MODEL_ENV}")
            continue
        for precision in args.precisions.split(","):
            spec = json.dumps({"kwargs": row_kwargs[name], "precision": precision})
            cmd = [sys.executable, __file__, "--child", spec, "--size", *map(str, args.size)]
            cmd += ["--batch", str(args.batch)]
            if args.checkpointing:
                cmd += ["--checkpointing", args.checkpointing]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                table.add_row(name, precision, "failed: " + _failure(proc.stderr))
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if precision == "fp32":
                eval_fp32[name] = r["eval_s"]
            table.add_row(
                name,
                precision,
                f"{r['params'] / 1e6:.2f}",
                f"{r['gflop']:.0f}",
                f"{r['eval_s']:.2f}",
                f"{r['eval_gb']:.2f}",
                f"{r['gflop'] / r['eval_s']:.0f}",
                f"{r['train_s']:.1f}" if "train_s" in r else "-",
                f"{r['train_gb']:.2f}" if "train_gb" in r else "-",
            )
    console = Console(width=160)
    console.print(table)
    if "released" in eval_fp32 and AUTHORS_ROW in eval_fp32:
        ratio = eval_fp32[AUTHORS_ROW] / eval_fp32["released"]
        console.print(f"released variant vs the authors' code, fp32 eval forward: {ratio:.2f}x faster")


def _child(args: argparse.Namespace) -> None:
    """One measurement (``--child SPEC``), printed as a JSON line; a user error as one ``error:`` line."""
    spec = json.loads(args.child)
    try:
        out = _measure(spec["kwargs"], args.size, args.batch, spec["precision"], args.checkpointing)
    except H2ASegError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(out))


def _row_kwargs(rows: list[str], flag: str | None) -> dict[str, dict[str, Any]]:
    """Each row's measurement settings; the authors' row gets its constructor keyword arguments, checked
    against their class's signature first (when their code is set up)."""
    settings = {name: dict(ROWS[name]) for name in rows if name in ROWS}
    if AUTHORS_ROW in settings and os.environ.get(AUTHORS_CODE_ENV):
        kwargs, source = authors_kwargs(flag)
        check_authors_kwargs(authors_class(), kwargs, source)
        settings[AUTHORS_ROW].update(authors_kwargs=kwargs, authors_source=source)
    return settings


def _failure(stderr: str) -> str:
    """A failed measurement's last stderr line: whole when it is our one-line error, else its start."""
    lines = stderr.strip().splitlines() or ["no error output"]
    last = lines[-1]
    return last.removeprefix("error: ") if last.startswith("error: ") else last[:60]


if __name__ == "__main__":
    main()
