"""CPU inference candidates against the current path, in one process, interleaved; prints a table.

Issue 28 item 2: for each model, the float32 eval forward of the current path ("eager") and of each
candidate, timed in turns (round-robin, ``--repeats`` rounds, median reported) so that a machine shared with
other work slows them alike. Each candidate's probabilities are compared with the current path's (max abs
difference; Dice of the masks at 0.5, or of the argmax for two classes).

Candidates:

- ``channels-last``: model weights and input in ``torch.channels_last_3d``;
- ``channels-last-input``, ``channels-last-weights``: one of the two alone;
- ``onednn-convs``: every float32 CPU convolution sent to oneDNN (:mod:`h2aseg.models.fast_eval`), where
  PyTorch's heuristic picks its slow native kernel for small batch-1 maps;
- ``compile``: ``torch.compile`` (inductor, CPU), its compile time measured apart (first call);
- ``onnxruntime``: the network exported to ONNX (reference kernels: the fused norm node does not export) and
  run by ONNX Runtime with as many intra-op threads; only when ``onnxruntime`` and ``onnx`` are installed;
- ``batch N`` (``--batch-candidates``): the time per window of a batch of N windows (as
  ``infer.sw_batch_size`` gives), against the current path's batch.

Usage::

    python benchmarks/cpu_candidates.py [--models demo,released] [--threads 2] [--repeats 3]
        [--candidates eager,channels-last,onednn-convs,compile,onnxruntime] [--batch-candidates 2,4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from h2aseg.evaluation.metrics import dice

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_forward import build_model

CANDIDATES = ("eager", "channels-last", "onednn-convs", "compile", "onnxruntime")
#: demo: the shipped model as it predicts (its window, infer.sw_batch_size 4); others at batch 1
DEFAULT_BATCH = {"demo": 4}

Forward = Callable[[torch.Tensor], torch.Tensor]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    from h2aseg.models.outputs import class_probabilities

    return class_probabilities(logits.float())


def mask_of(probs: torch.Tensor) -> torch.Tensor:
    return probs[:, 0] >= 0.5 if probs.shape[1] == 1 else probs.argmax(dim=1) > 0


class _LogitsOnly(nn.Module):
    """``net(x)`` with one positional argument (what the ONNX tracer passes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def onnx_forward(net: nn.Module, x: torch.Tensor, threads: int) -> tuple[Forward, float]:
    """An ONNX Runtime session of ``net`` for inputs like ``x``, and the export + session time."""
    import onnxruntime as ort

    from h2aseg.models.kernels import use_reference_kernels

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, use_reference_kernels(), torch.no_grad():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            _LogitsOnly(net),
            (x,),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - t0

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": inp.numpy()})[0])

    return forward, seconds


def candidate(
    name: str, net: nn.Module, x: torch.Tensor, threads: int
) -> tuple[Forward, torch.Tensor, float]:
    """The forward of candidate ``name``, the input it takes, and its set-up time (compile, export)."""
    from h2aseg.models.fast_eval import onednn_convolutions

    if name == "eager":
        return net, x, 0.0
    if name == "channels-last":
        cl = build_like(net).to(memory_format=torch.channels_last_3d)
        return cl, x.contiguous(memory_format=torch.channels_last_3d), 0.0
    if name == "channels-last-input":
        return net, x.contiguous(memory_format=torch.channels_last_3d), 0.0
    if name == "channels-last-weights":
        return build_like(net).to(memory_format=torch.channels_last_3d), x, 0.0
    if name == "onednn-convs":

        def forward(inp: torch.Tensor) -> torch.Tensor:
            with onednn_convolutions():
                return net(inp)

        return forward, x, 0.0
    if name == "compile":
        compiled = torch.compile(build_like(net))
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(x)
        return compiled, x, time.perf_counter() - t0
    if name == "onnxruntime":
        forward, seconds = onnx_forward(net, x, threads)
        return forward, x, seconds
    raise SystemExit(f"cpu_candidates.py: error: unknown candidate {name!r}; choose among {CANDIDATES}")


def build_like(net: nn.Module) -> nn.Module:
    """A separate copy of ``net`` (a candidate that changes the model must not change the reference)."""
    import copy

    return copy.deepcopy(net).eval()


def cpu_peak_gflops(threads: int, flop_per_cycle: int) -> float:
    """fp32 peak of ``threads`` cores: cores x clock (the first ``cpu MHz`` of /proc/cpuinfo) x FLOP/cycle."""
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    return threads * mhz * flop_per_cycle / 1000


def run_model(name: str, size: tuple[int, int, int], args: argparse.Namespace) -> None:
    net, own = build_model(name)
    shape = own or size
    batch = DEFAULT_BATCH.get(name, 1)
    torch.manual_seed(1)
    x = torch.randn(batch, 2, *shape)
    rows: dict[str, tuple[Forward, torch.Tensor, float, int]] = {}
    for cand in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        try:
            fwd, inp, setup = candidate(cand, net, x, args.threads)
        except ImportError as e:
            print(f"{name}: {cand} skipped ({e})")
            continue
        except Exception as e:  # a candidate that cannot run is a result too
            print(f"{name}: {cand} failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
        rows[cand] = (fwd, inp, setup, batch)
    for n in [int(v) for v in args.batch_candidates.split(",") if v.strip()]:
        if n != batch:
            xb = torch.randn(n, 2, *shape)
            rows[f"batch {n}"] = (net, xb, 0.0, n)
    times: dict[str, list[float]] = {k: [] for k in rows}
    outs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            net(x[:1])
        gflop = counter.get_total_flops() / 1e9  # per window
        for key, (fwd, inp, _, _) in rows.items():  # warm-up, and the outputs compared
            outs[key] = probabilities(fwd(inp))
        for _ in range(args.repeats):
            for key, (fwd, inp, _, _) in rows.items():
                t0 = time.perf_counter()
                fwd(inp)
                times[key].append(time.perf_counter() - t0)
    ref = outs["eager"]
    base = statistics.median(times["eager"]) / batch
    print(
        f"\n=== {name}: fp32 eval forward at {'x'.join(map(str, shape))}, {args.threads} threads, "
        f"median of {args.repeats} interleaved rounds ==="
    )
    peak = cpu_peak_gflops(args.threads, args.flop_per_cycle)
    print(
        f"{gflop:.1f} GFLOP per window (PyTorch's count); fp32 peak {peak:.0f} GFLOP/s = "
        f"{args.threads} cores x clock x {args.flop_per_cycle} FLOP/cycle"
    )
    print(
        f"{'candidate':<22}{'batch':>6}{'s/window':>10}{'vs eager':>10}{'% peak':>8}{'setup s':>9}"
        f"{'max |dp|':>11}{'Dice':>8}"
    )
    for key, (_, _inp, setup, n) in rows.items():
        per = statistics.median(times[key]) / n
        if key.startswith("batch"):
            diff, d = "-", "-"  # other random windows: nothing to compare
        else:
            diff = f"{float((outs[key] - ref).abs().max()):.1e}"
            d = f"{dice(mask_of(outs[key]).numpy(), mask_of(ref).numpy()) / 100:.4f}"  # NaN: both empty
        share = f"{gflop / per / peak:.1%}" if peak else "-"
        print(f"{key:<22}{n:>6}{per:>10.3f}{base / per:>9.2f}x{share:>8}{setup:>9.1f}{diff:>11}{d:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,released")
    ap.add_argument("--size", type=int, nargs=3, default=[128, 128, 64], help="window of released/paper")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument(
        "--flop-per-cycle",
        type=int,
        default=32,
        help="fp32 FLOP per cycle and core for the peak (32: two 256-bit FMA pipes, AVX-512 double-pumped, "
        "as on AMD Zen 4; 64 for two 512-bit FMA units)",
    )
    ap.add_argument("--batch-candidates", default="", help="e.g. 2,4: time per window at these batches")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        run_model(name, tuple(args.size), args)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
