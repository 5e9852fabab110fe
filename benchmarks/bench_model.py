"""Speed and memory of the H2ASeg network on this machine; prints one table.

Rows: paper variant, released variant, and the einsum (non-fused) attention path, in fp32 and bf16
autocast. Columns: parameters, forward GFLOP (PyTorch's FlopCounterMode), eval-forward time and peak
memory at 128x128x64 (batch 1), a training step (forward, eq. 5 loss, backward, Adam step) at the
paper's setting of 2 cases x 2 crops (batch 4) of 128x128x64 with its time and peak memory, and the
achieved GFLOP/s of the eval forward.

The row "authors' code" measures the authors' released implementation side by side with ours, when it is
importable (it is not shipped): ``H2ASEG_AUTHORS_CODE`` names the folder of their repository (put on
``sys.path``) and ``H2ASEG_AUTHORS_MODEL`` the class as ``module.path:ClassName``; the class is built with its
constructor defaults (the released configuration, 8-16-32-64-128) and called as ``model(ct, pet)``. The line
under the table gives the released variant's fp32 eval-forward speed-up over it.

Each measurement runs in a fresh subprocess so that peak memory (max RSS on CPU, max allocated on CUDA)
belongs to that configuration alone. Usage::

    python benchmarks/bench_model.py [--size 128 128 64] [--batch 4] [--rows paper,released,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTHORS_ROW = "authors' code"
AUTHORS_CODE_ENV = "H2ASEG_AUTHORS_CODE"
AUTHORS_MODEL_ENV = "H2ASEG_AUTHORS_MODEL"

ROWS = {
    "paper": {"variant": "paper"},
    "paper (MCSA at levels 2-5)": {"variant": "paper", "mcsa_levels": (2, 3, 4, 5)},
    "released": {"variant": "released"},
    "released, einsum attention": {"variant": "released", "attention": "reference"},
    "paper, einsum attention": {"variant": "paper", "attention": "reference"},
    AUTHORS_ROW: {"authors": True},
}


def build_authors_model() -> torch.nn.Module:
    """The authors' network from the folder and class named by the environment (see the module docstring),
    behind a ``(B, 2, X, Y, Z)`` -> ``model(ct, pet)`` adapter (channel 0 CT, channel 1 PET)."""
    import importlib

    import torch

    folder, spec = os.environ.get(AUTHORS_CODE_ENV), os.environ.get(AUTHORS_MODEL_ENV)
    if not folder or not spec or ":" not in spec:
        raise RuntimeError(
            f"not importable: set {AUTHORS_CODE_ENV}=<folder of their repository> and "
            f"{AUTHORS_MODEL_ENV}=<module.path:ClassName>"
        )
    if not os.path.isdir(folder):
        raise RuntimeError(f"{AUTHORS_CODE_ENV}={folder} is not a folder")
    sys.path.insert(0, folder)
    module_name, class_name = spec.split(":", 1)
    cls = getattr(importlib.import_module(module_name), class_name)

    class TwoInputs(torch.nn.Module):
        out_channels = 2  # the released code's two softmax classes

        def __init__(self) -> None:
            super().__init__()
            self.model = cls()

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
    net = build_authors_model() if kwargs.get("authors") else build_network("h2aseg", **kwargs)
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
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        out = _measure(spec["kwargs"], args.size, args.batch, spec["precision"], args.checkpointing)
        print(json.dumps(out))
        return

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
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if name == AUTHORS_ROW and not os.environ.get(AUTHORS_CODE_ENV):
            table.add_row(name, "-", f"not importable: set {AUTHORS_CODE_ENV} and {AUTHORS_MODEL_ENV}")
            continue
        for precision in args.precisions.split(","):
            spec = json.dumps({"kwargs": ROWS[name], "precision": precision})
            cmd = [sys.executable, __file__, "--child", spec, "--size", *map(str, args.size)]
            cmd += ["--batch", str(args.batch)]
            if args.checkpointing:
                cmd += ["--checkpointing", args.checkpointing]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                table.add_row(name, precision, "failed: " + proc.stderr.strip().splitlines()[-1][:60])
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


if __name__ == "__main__":
    main()
