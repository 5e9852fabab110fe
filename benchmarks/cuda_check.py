"""Checks and times the CUDA path on a GPU machine; prints a Markdown report (and writes it with --out).

What it checks, each section on its own (a failure is reported and the next section runs):

1. parity: the paper and released networks give the same outputs and gradients on CUDA (fp32, TF32 off)
   as on the CPU, and finite, close outputs under bf16/fp16 autocast;
2. eval forward at 128x128x64 (batch 1) per variant and precision: time, peak memory, GFLOP/s;
3. the paper's training step (2 cases x 2 crops = 4 patches of 128x128x64, eq. 5 loss, Adam) under
   bf16 and fp16 autocast (fp16 with a GradScaler), with and without activation checkpointing: time,
   peak memory, finite loss and gradients;
4. whole-case sliding-window prediction (``Predictor``) of a 400x400x326 synthetic case, and CPU/CUDA
   agreement of the predicted mask on a small case with the shipped demo checkpoint;
5. the command line end to end on CUDA: ``h2aseg synth``, ``train`` (fp16), ``train --resume``,
   ``predict`` and ``evaluate``;
6. (``fused``) the fused instance-norm node against the module path;
7. (``tune``) cuDNN benchmark mode, channels-last 3D, ``torch.compile`` and a CUDA graph, one at a time,
   for the eval forward and the training step, as TFLOP/s and share of the card's peak.

Usage (``--quick`` shrinks every size so the script itself can be checked on a CPU)::

    python benchmarks/cuda_check.py [--out DIR] [--quick] [--sections parity,eval,...,tune]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

VARIANTS = {"paper": {"variant": "paper"}, "released": {"variant": "released"}}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device: torch.device, prec: str) -> Any:
    """Autocast to ``prec``'s type; plain float32 (autocast off) for "fp32"."""
    return torch.autocast(device.type, dtype=DTYPES[prec], enabled=DTYPES[prec] is not None)


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.data: dict[str, Any] = {}

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def low_precisions(device: torch.device) -> tuple[str, ...]:
    """Autocast types worth timing: bf16 and fp16 on CUDA; bf16 alone on a CPU (fp16 is emulated there)."""
    return ("bf16", "fp16") if device.type == "cuda" else ("bf16",)


def build(kwargs: dict, device: torch.device, seed: int = 0, **extra: Any) -> torch.nn.Module:
    from h2aseg.models import build_network

    torch.manual_seed(seed)
    return build_network("h2aseg", **kwargs, **extra).to(device)


# ------------------------------------------------------------------------------------------------
def section_parity(rep: Report, device: torch.device, quick: bool) -> None:
    from h2aseg.training.losses import DeepSupervisedDiceCE

    size = (32, 32, 16) if quick else (64, 64, 32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for name, kwargs in VARIANTS.items():
        cpu = build(kwargs, torch.device("cpu"), dropout=0.0, attn_dropout=0.0).eval()
        gpu = build(kwargs, device, dropout=0.0, attn_dropout=0.0).eval()
        gpu.load_state_dict(cpu.state_dict())
        torch.manual_seed(1)
        x = torch.randn(2, 2, *size)
        with torch.no_grad():
            ref = cpu(x)
            out = gpu(x.to(device)).float().cpu()
        scale = ref.abs().max().item()
        rel = (out - ref).abs().max().item() / scale
        low = []
        for prec in low_precisions(device):
            with torch.no_grad(), _autocast(device, prec):
                o = gpu(x.to(device)).float().cpu()
            low.append(
                f"{prec}: finite={bool(torch.isfinite(o).all())}, "
                f"rel {(o - ref).abs().max().item() / scale:.1e}"
            )
        # gradients of the eq. (5) loss
        cpu.train()
        gpu.train()
        y = (torch.rand(2, 1, *size) > 0.9).long()
        loss_fn = DeepSupervisedDiceCE(cpu.out_channels)
        loss_c = loss_fn(cpu(x), y)
        loss_c.backward()
        loss_g = loss_fn(gpu(x.to(device)), y.to(device))
        loss_g.backward()
        diffs, norms = [], []
        for (_, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
            diffs.append((pg.grad.cpu() - pc.grad).norm())
            norms.append(pc.grad.norm())
        total = torch.stack(norms).norm().item()
        global_rel = torch.stack(diffs).norm().item() / total
        # per parameter, among those with a real gradient (conv biases before an instance norm get ~0)
        worst = max((d / n).item() for d, n in zip(diffs, norms, strict=True) if n > 1e-3 * max(norms).item())
        rows.append(
            [
                name,
                f"{rel:.1e}",
                f"{abs(loss_g.item() - loss_c.item()):.1e}",
                f"{global_rel:.1e} / {worst:.1e}",
                "; ".join(low),
            ]
        )
        rep.data.setdefault("parity", {})[name] = {
            "fp32_rel": rel,
            "grad_rel": global_rel,
            "grad_worst": worst,
        }
    rep.add(
        f"### 1. CUDA vs CPU parity (fp32, TF32 off, input 2 x 2 x {'x'.join(map(str, size))}, dropout off)"
    )
    rep.add()
    rep.table(
        [
            "variant",
            "output rel. error",
            "loss abs. error",
            "grad rel. error (all / worst param)",
            "autocast",
        ],
        rows,
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# Dense peaks of the H100/H200 SXM (NVIDIA's data sheets, without sparsity) in TFLOP/s, what "% of peak"
# divides by; fp32 convolutions and matmuls run as TF32 here. Other devices get no "% of peak".
PEAK_TFLOPS = {"fp32": 494.7, "bf16": 989.5}
PEAK_DEVICES = ("H100", "H200")
TUNE_SETTINGS: dict[str, dict[str, bool]] = {
    "plain": {},
    "cudnn.benchmark": {"bench": True},
    "benchmark + channels_last_3d": {"bench": True, "cl": True},
    "benchmark + torch.compile": {"bench": True, "compile": True},
    "benchmark + CUDA graph": {"bench": True, "graph": True},
}


def _graphed_forward(net: torch.nn.Module, x: torch.Tensor, prec: str) -> Callable[[], Any]:
    """``net(x)`` captured once in a CUDA graph (the input copied into a static buffer), replayed per call."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad(), _autocast(x.device, prec):
        for _ in range(3):
            net(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad(), _autocast(x.device, prec):
        net(static)

    def replay() -> None:
        static.copy_(x)
        graph.replay()

    return replay


def _tune_callable(
    kwargs: dict, task: str, prec: str, opt: dict[str, bool], x: torch.Tensor, y: torch.Tensor
) -> Callable[[], Any]:
    device = x.device
    net = build(kwargs, device).train(task == "train")
    if opt.get("cl"):
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if opt.get("compile"):
        net = torch.compile(net)
    if opt.get("graph"):
        return _graphed_forward(net, x, prec)
    if task == "train":
        return TrainStep(net, prec, x, y)

    def forward() -> None:
        with torch.no_grad(), _autocast(device, prec):
            net(x)

    return forward


def section_tune(rep: Report, device: torch.device, quick: bool) -> None:
    """What the ecosystem offers for speed, each setting on its own: cuDNN's benchmark mode, channels-last 3D
    memory, ``torch.compile`` (bf16, CUDA only) and a CUDA graph (eval, CUDA only). Eval forward (batch 1)
    and the training step, as time and as a share of the card's dense peak."""
    from torch.utils.flop_counter import FlopCounterMode

    size = (32, 32, 16) if quick else (128, 128, 64)
    batch = 2 if quick else 4
    shape = "x".join(map(str, size))
    name_of_device = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peaks = PEAK_TFLOPS if any(d in name_of_device for d in PEAK_DEVICES) else None
    rep.add(f"### 7. Speed settings: eval forward (batch 1) and training step ({batch} patches), {shape}")
    rep.add()
    rep.add("| variant | task | precision | setting | ms | TFLOP/s | % of peak | note |")
    rep.add("|---|---|---|---|---|---|---|---|")
    inputs: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, kwargs in VARIANTS.items():
        for task in ("eval", "train"):
            torch.manual_seed(2)
            n = 1 if task == "eval" else batch
            x = torch.randn(n, 2, *size, device=device)
            y = (torch.rand(n, 1, *size, device=device) > 0.98).long()
            counter = FlopCounterMode(display=False)
            with counter:
                _tune_callable(kwargs, task, "fp32", {}, x, y)()
            inputs[name, task] = x, y, counter.get_total_flops() / 1e9
    runs = [
        (name, task, prec, label)
        for label in TUNE_SETTINGS  # compilation (minutes) after every quick setting
        for name in VARIANTS
        for task in ("eval", "train")
        for prec in ("fp32", "bf16")
        if not (TUNE_SETTINGS[label].get("graph") and (task == "train" or device.type != "cuda"))
        and not (TUNE_SETTINGS[label].get("compile") and (prec == "fp32" or device.type != "cuda"))
    ]
    for name, task, prec, label in runs:
        opt = TUNE_SETTINGS[label]
        x, y, gflop = inputs[name, task]
        torch.backends.cudnn.benchmark = bool(opt.get("bench"))
        note = ""
        try:
            fn = _tune_callable(VARIANTS[name], task, prec, opt, x, y)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if opt.get("compile"):
                note = f"first call {time.perf_counter() - t0:.0f} s"
            t = statistics.median(timed(fn, device, warmup=2, reps=3 if quick else 10))
            tflops = gflop / t / 1000
            pct = f"{100 * tflops / peaks[prec]:.2f}" if peaks else "-"
            cells = [f"{t * 1000:.1f}", f"{tflops:.1f}", pct]
            rep.data.setdefault("tune", {})[f"{name} {task} {prec} {label}"] = {"s": t, "tflops": tflops}
            del fn
        except Exception as e:  # a setting that fails is a result too
            cells = ["-", "-", "-"]
            first = str(e).splitlines()[0][:120] if str(e) else ""
            note = f"failed: {type(e).__name__}: {first}"
        rep.add("| " + " | ".join([name, task, prec, label, *cells, note]) + " |")
        torch.compiler.reset()
        reset_peak(device)
    torch.backends.cudnn.benchmark = False
    rep.add()
    known = f"peaks of {name_of_device}: {peaks}" if peaks else f"no known peak for {name_of_device}"
    rep.add(f"GFLOP counted once per task (torch FlopCounterMode, fp32, plain model); {known}.")
    rep.add()


def section_eval(rep: Report, device: torch.device, quick: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    size = (32, 32, 16) if quick else (128, 128, 64)
    rows = []
    for name, kwargs in VARIANTS.items():
        net = build(kwargs, device).eval()
        x = torch.randn(1, 2, *size, device=device)
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                net(x)
            gflop = counter.get_total_flops() / 1e9
            for prec in ("fp32", *low_precisions(device)):
                reset_peak(device)
                with _autocast(device, prec):
                    times = timed(partial(net, x), device, warmup=2, reps=3 if quick else 10)
                t = statistics.median(times)
                rows.append(
                    [
                        name,
                        prec,
                        f"{gflop:.0f}",
                        f"{t * 1000:.1f}",
                        f"{peak_gb(device):.2f}",
                        f"{gflop / t:.0f}",
                    ]
                )
                rep.data.setdefault("eval", {})[f"{name} {prec}"] = {"s": t, "gb": peak_gb(device)}
        del net
    rep.add(f"### 2. Eval forward, batch 1, {'x'.join(map(str, size))} (median; fp32 allows TF32)")
    rep.add()
    rep.table(["variant", "precision", "GFLOP", "ms", "peak GB", "GFLOP/s"], rows)


class TrainStep:
    """One training step (autocast forward, eq. 5 loss, scaled backward, Adam) of ``net`` on ``(x, y)``."""

    def __init__(self, net: torch.nn.Module, prec: str, x: torch.Tensor, y: torch.Tensor) -> None:
        from h2aseg.training.losses import DeepSupervisedDiceCE

        self.net, self.prec, self.x, self.y = net, prec, x, y
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5)
        self.scaler = torch.amp.GradScaler(x.device.type, enabled=prec == "fp16")
        self.loss_fn = DeepSupervisedDiceCE(net.out_channels)
        self.finite: list[bool] = []
        self.loss = float("nan")

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with _autocast(self.x.device, self.prec):  # "fp32": autocast off, not its default type
            outs = self.net(self.x)
        loss = self.loss_fn(outs, self.y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        self.finite.append(bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads))
        self.loss = loss.item()
        self.scaler.step(self.opt)
        self.scaler.update()


def section_train(rep: Report, device: torch.device, quick: bool) -> None:
    size = (32, 32, 32) if quick else (128, 128, 64)
    batch = 2 if quick else 4
    rows = []
    for name, kwargs in VARIANTS.items():
        for prec in low_precisions(device):
            for ckpt in (False, True):
                torch.manual_seed(2)
                x = torch.randn(batch, 2, *size, device=device)
                y = (torch.rand(batch, 1, *size, device=device) > 0.98).long()
                step = TrainStep(build(kwargs, device, gradient_checkpointing=ckpt).train(), prec, x, y)
                reset_peak(device)
                label = [name, prec, "yes" if ckpt else "no"]
                try:
                    for _ in range(3):  # warm-up (and, in fp16, the GradScaler finding its scale)
                        step()
                    step.finite = []
                    t = statistics.median(timed(step, device, warmup=0, reps=2 if quick else 5))
                    gb = peak_gb(device)
                    finite = f"{sum(step.finite)}/{len(step.finite)}"
                    rows.append([*label, f"{t:.3f}", f"{gb:.2f}", finite, f"{step.loss:.3f}"])
                    key = f"{name} {prec} ckpt={ckpt}"
                    rep.data.setdefault("train", {})[key] = {"s": t, "gb": gb, "finite": finite}
                except torch.OutOfMemoryError:
                    rows.append([*label, "out of memory", "-", "-", "-"])
                del step
                reset_peak(device)
    rep.add(
        f"### 3. Training step, {batch} patches of {'x'.join(map(str, size))}, eq. (5) loss, Adam (median)"
    )
    rep.add()
    header = ["variant", "autocast", "checkpointing", "s / step", "peak GB", "finite steps", "last loss"]
    rep.table(header, rows)


def section_fused(rep: Report, device: torch.device, quick: bool) -> None:
    """The fused instance-norm node (h2aseg.models.kernels.norm_act) against the module path on this device:
    gradients of one fp32 step, then bf16 step time and memory each way. It is on by default only on the
    CPU (where it was measured); this section is what decides whether CUDA should take it too."""
    import h2aseg.models.kernels as kernels
    from h2aseg.training.losses import DeepSupervisedDiceCE

    size = (32, 32, 32) if quick else (128, 128, 64)
    batch = 2 if quick else 4
    default = set(kernels.FUSED_DEVICES)
    rows = []
    try:
        for name, kwargs in VARIANTS.items():
            torch.manual_seed(3)
            x = torch.randn(batch, 2, *size, device=device)
            y = (torch.rand(batch, 1, *size, device=device) > 0.98).long()
            grads, timing = {}, {}
            for fused in (False, True):
                kernels.FUSED_DEVICES = default | {device.type} if fused else default - {device.type}
                net = build(kwargs, device, dropout=0.0, attn_dropout=0.0).train()
                DeepSupervisedDiceCE(net.out_channels)(net(x), y).backward()
                grads[fused] = [p.grad.float().clone() for p in net.parameters()]
                step = TrainStep(net, "bf16", x, y)
                reset_peak(device)
                step()
                t = statistics.median(timed(step, device, warmup=1, reps=2 if quick else 5))
                timing[fused] = (t, peak_gb(device))
                del net, step
                reset_peak(device)
            diff = torch.stack(
                [(a - b).norm() for a, b in zip(grads[True], grads[False], strict=True)]
            ).norm()
            rel = (diff / torch.stack([g.norm() for g in grads[False]]).norm()).item()
            (t_mod, gb_mod), (t_fused, gb_fused) = timing[False], timing[True]
            rows.append(
                [name, f"{rel:.1e}", f"{t_mod:.3f} / {gb_mod:.2f}", f"{t_fused:.3f} / {gb_fused:.2f}"]
            )
            rep.data.setdefault("fused", {})[name] = {
                "grad_rel": rel,
                "modules": timing[False],
                "fused": timing[True],
            }
    finally:
        kernels.FUSED_DEVICES = default
    rep.add(
        f"### 6. Fused norm node vs modules on {device.type.upper()}, {batch} x {'x'.join(map(str, size))}"
    )
    rep.add()
    header = ["variant", "fp32 grad rel. diff", "modules: bf16 s / GB", "fused: bf16 s / GB"]
    rep.table(header, rows)


def section_predict(rep: Report, device: torch.device, quick: bool) -> None:
    import numpy as np

    from h2aseg.config import load_config
    from h2aseg.data.io import write_volume
    from h2aseg.demo import shipped_checkpoint
    from h2aseg.inference.predictor import Predictor
    from h2aseg.models.factory import build_from_config
    from h2aseg.synth import synth_case

    shape = (96, 96, 80) if quick else (400, 400, 326)
    spacing = (2.0364, 2.0364, 3.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        case = synth_case("wholebody", seed=0, shape=shape, spacing=spacing)
        ct, pet = Path(tmp) / "ct.nii.gz", Path(tmp) / "pet.nii.gz"
        write_volume(ct, case["ct"], case["ct_affine"])
        write_volume(pet, case["pet"], case["pet_affine"])
        settings = [
            ("released", "bf16", 0.5, False, ["model.variant=released", "model.out_channels=2"]),
            ("paper", "bf16", 0.5, False, []),
            ("paper", low_precisions(device)[-1], 0.5, True, []),
        ]
        if quick:
            settings = settings[:2]
        for name, amp, overlap, tta, extra in settings:
            overrides = [
                f"infer.amp={amp}",
                f"infer.overlap={overlap}",
                f"infer.tta_flips={tta}",
                "infer.sw_batch_size=4",
            ]
            if quick:
                overrides += ["data.patch_size=[32,32,32]", "model.channels=[4,8,8,8,8]"]
            cfg = load_config("autopet2", extra + overrides)
            predictor = Predictor(build_from_config(cfg.model), cfg, device)
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            predictor.predict_files(ct, pet)
            sync(device)
            seconds = time.perf_counter() - t0
            label = f"{name}, {amp}, overlap {overlap}" + (", 8-flip TTA" if tta else "")
            rows.append(
                [label, "x".join(map(str, predictor.roi_size)), f"{seconds:.1f}", f"{peak_gb(device):.2f}"]
            )
            rep.data.setdefault("predict", {})[label] = seconds
        rep.add(
            f"### 4. Whole-case prediction of a {'x'.join(map(str, shape))} case "
            "(read, preprocess, sliding window, back to CT grid)"
        )
        rep.add()
        rep.table(["setting", "patch", "seconds", "peak GB"], rows)

        # CPU vs CUDA masks with the shipped demo model on a small case
        ckpt = shipped_checkpoint()
        if ckpt is None:
            rep.add("(no shipped demo checkpoint: CPU/CUDA mask agreement skipped)")
            return
        small = synth_case("wholebody", seed=3, shape=(96, 96, 80) if quick else (128, 128, 160))
        ct2, pet2 = Path(tmp) / "ct2.nii.gz", Path(tmp) / "pet2.nii.gz"
        write_volume(ct2, small["ct"], small["ct_affine"])
        write_volume(pet2, small["pet"], small["pet_affine"])
        masks, probs = {}, {}
        for dev in ("cpu", device.type):
            p = Predictor.from_checkpoint(
                ckpt, ["infer.amp=off", f"infer.device={dev}", "infer.save_probabilities=true"]
            )
            pred = p.predict_files(ct2, pet2)
            masks[dev], probs[dev] = pred.mask.astype(bool), pred.probability
        a, b = masks["cpu"], masks[device.type]
        dice = 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())
        diff = float(np.abs(probs["cpu"] - probs[device.type]).max())
        rep.add(
            f"Shipped demo model, fp32, CPU vs {device.type.upper()} on a 128x128x160 case: "
            f"mask Dice {dice:.6f} "
            f"({int(a.sum())} vs {int(b.sum())} voxels), max probability difference {diff:.2e}"
        )
        rep.add()
        rep.data["predict_parity"] = {"dice": float(dice), "max_prob_diff": diff}


def section_cli(rep: Report, device: torch.device, quick: bool) -> None:
    env = dict(os.environ)
    rows: list[list[str]] = []
    notes: list[str] = []

    def run(args: list[str]) -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "h2aseg", *args], capture_output=True, text=True, env=env
        )
        seconds = time.perf_counter() - t0
        ok = proc.returncode == 0
        rows.append([" ".join(args[:1]), "ok" if ok else f"exit {proc.returncode}", f"{seconds:.1f}"])
        if not ok:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"h2aseg {' '.join(args)} failed:\n" + "\n".join(tail))

    with tempfile.TemporaryDirectory() as tmp:
        data, run_dir, preds = Path(tmp) / "data", Path(tmp) / "run", Path(tmp) / "preds"
        shape = ["64", "64", "64"] if quick else ["96", "96", "96"]
        sets = [
            "--set",
            "train.steps_per_epoch=4",
            "--set",
            "train.val_every=1",
            "--set",
            "train.val_max_cases=2",
        ]
        dev, amp = device.type, low_precisions(device)[-1]
        train = [
            "train",
            "--data",
            str(data),
            "--out",
            str(run_dir),
            "--device",
            dev,
            "--amp",
            amp,
            "--no-progress",
            *sets,
        ]
        try:
            run(["synth", "--out", str(data), "--cases", "8", "--shape", *shape])
            run([*train, "--epochs", "2"])
            run([*train, "--epochs", "3", "--resume"])  # extends the finished 2-epoch run
            best = run_dir / "checkpoints" / "best.pt"
            run(
                [
                    "predict",
                    "--checkpoint",
                    str(best),
                    "--input",
                    str(data),
                    "--out-dir",
                    str(preds),
                    "--device",
                    dev,
                    "--amp",
                    amp,
                ]
            )
            run(["evaluate", "--pred", str(preds), "--gt", str(data), "--out", str(Path(tmp) / "eval")])
            history = (run_dir / "metrics.csv").read_text().strip().splitlines()
            rep.data["cli_history"] = history
            summary = json.loads((Path(tmp) / "eval" / "summary.json").read_text())
            rep.data["cli_eval"] = summary
            notes.append(f"metrics.csv: {history[0]} / {history[-1]}")
            notes.append(f"evaluate summary: {json.dumps(summary)[:600]}")
        finally:
            rep.add(
                f"### 5. Command line end to end on {device.type.upper()} "
                f"(8 synthetic cases, {low_precisions(device)[-1]} autocast)"
            )
            rep.add()
            rep.table(["command", "result", "seconds"], rows)
            for note in notes:
                rep.add(note)
                rep.add()


SECTIONS = {
    "parity": section_parity,
    "eval": section_eval,
    "train": section_train,
    "predict": section_predict,
    "cli": section_cli,
    "fused": section_fused,
    "tune": section_tune,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for cuda_check.md and cuda_check.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (to check the script itself on a CPU)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rep = Report()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (no CUDA device)"
    rep.add(f"## h2aseg CUDA check: {name}")
    rep.add()
    rep.add(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    rep.add()
    failed = []
    for section in [s.strip() for s in args.sections.split(",") if s.strip()]:
        t0 = time.perf_counter()
        try:
            SECTIONS[section](rep, device, args.quick)
        except Exception:  # report and go on with the next section
            failed.append(section)
            rep.add(f"**section {section} failed:**")
            rep.add("```")
            rep.add(traceback.format_exc().strip())
            rep.add("```")
            rep.add()
        print(f"[{section}: {time.perf_counter() - t0:.0f} s]", flush=True)
    rep.add(f"Failed sections: {', '.join(failed) if failed else 'none'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_check.md").write_text("\n".join(rep.lines) + "\n")
        (args.out / "cuda_check.json").write_text(json.dumps(rep.data, indent=1, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
