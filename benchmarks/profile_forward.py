"""Where the float32 eval forward's time goes on this machine; prints tables.

For each model (the paper and released variants at the paper's widths, and the shipped demo model at its
own training window), one eval forward in float32 (no autocast) after a warm-up, under
``torch.profiler``:

- by operator: self CPU time of each ATen operator (the convolutions, the batch-norm kernel of the fused
  instance norm, attention, interpolation ...), with its share of the forward;
- by convolution shape: the convolutions grouped by input shape and weight shape (which level, how many
  channels), since they are most of the time;
- by module type: the exclusive time of the network's building blocks (encoder/decoder residual blocks,
  MCSA, BDSA, TAMW, heads), measured with forward hooks (a block's time less that of the blocks inside it).

Usage::

    python benchmarks/profile_forward.py [--models released,paper,demo] [--size 128 128 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "src/h2aseg/assets/demo_checkpoint.pt"
MODELS = ("released", "paper", "demo")


def build_model(name: str) -> tuple[nn.Module, tuple[int, int, int] | None]:
    """The network of ``name`` in eval mode and its own window (None: use ``--size``)."""
    from h2aseg.models import build_network

    if name == "demo":
        from h2aseg.checkpoint import load_checkpoint
        from h2aseg.config import Config
        from h2aseg.models.factory import build_from_config

        payload = load_checkpoint(DEMO_CHECKPOINT)
        cfg = Config.from_dict(payload["config"], source=str(DEMO_CHECKPOINT))
        net = build_from_config(cfg.model, patch_size=cfg.data.patch_size)
        net.load_state_dict(payload["model"], strict=True)
        return net.eval(), tuple(int(v) for v in cfg.data.patch_size)  # type: ignore[return-value]
    if name not in ("released", "paper"):
        raise SystemExit(f"profile_forward.py: error: unknown model {name!r}; choose among {MODELS}")
    torch.manual_seed(0)
    return build_network("h2aseg", variant=name).eval(), None


class BlockTimer:
    """Exclusive wall time per module type of the blocks (forward hooks; children's time subtracted)."""

    def __init__(self, model: nn.Module, types: tuple[type, ...]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []  # [start, time spent in hooked children]
        self._handles = []
        for m in model.modules():
            if isinstance(m, types):
                self._handles.append(m.register_forward_pre_hook(self._pre))
                self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, module: nn.Module, args: object) -> None:
        self._stack.append([time.perf_counter(), 0.0])

    def _post(self, module: nn.Module, args: object, out: object) -> None:
        start, inner = self._stack.pop()
        elapsed = time.perf_counter() - start
        name = type(module).__name__
        self.totals[name] += elapsed - inner
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][1] += elapsed

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def block_types() -> tuple[type, ...]:
    from h2aseg.models.attention import BiDirectionalSpatialAttention
    from h2aseg.models.blocks import InputResBlock, NormAct, PreActResBlock, SegHead
    from h2aseg.models.h2aseg import H2ASeg
    from h2aseg.models.mcsa import MCSA
    from h2aseg.models.tamw import TAMW

    return (
        H2ASeg,
        InputResBlock,
        PreActResBlock,
        SegHead,
        NormAct,
        MCSA,
        BiDirectionalSpatialAttention,
        TAMW,
    )


def profile(name: str, size: tuple[int, int, int], top: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    net, own = build_model(name)
    shape = own or size
    x = torch.randn(1, 2, *shape)
    with torch.no_grad():
        net(x)  # warm-up (oneDNN primitive caches)
        t0 = time.perf_counter()
        net(x)
        plain_s = time.perf_counter() - t0
        timer = BlockTimer(net, block_types())
        net(x)
        timer.remove()
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(x)
    print(f"\n=== {name}: fp32 eval forward at {'x'.join(map(str, shape))}, {plain_s:.2f} s unprofiled ===")
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator (self CPU time)':<48}{'calls':>7}{'ms':>10}{'share':>8}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        ms = e.self_cpu_time_total / 1e3
        print(f"{e.key[:47]:<48}{e.count:>7}{ms:>10.1f}{e.self_cpu_time_total / total:>8.1%}")
    kernels = ("aten::mkldnn_convolution", "aten::slow_conv3d_forward", "aten::slow_conv_dilated3d")
    convs = [
        e
        for e in prof.key_averages(group_by_input_shape=True)
        if e.key in kernels and e.self_cpu_time_total > 0
    ]
    conv_total = sum(e.self_cpu_time_total for e in convs)
    print(f"\n{'convolution kernel: input shape, weight shape':<60}{'calls':>7}{'ms':>10}{'share':>8}")
    for e in sorted(convs, key=lambda e: -e.self_cpu_time_total)[:top]:
        shapes = e.input_shapes[:2] if e.input_shapes else []
        label = (
            e.key.removeprefix("aten::").split("_")[0]
            + ": "
            + " ".join("x".join(map(str, s)) for s in shapes)
        )
        ms = e.self_cpu_time_total / 1e3
        print(f"{label[:59]:<60}{e.count:>7}{ms:>10.1f}{e.self_cpu_time_total / total:>8.1%}")
    print(f"(all convolutions: {conv_total / 1e3:.0f} ms of {total / 1e3:.0f} ms, {conv_total / total:.0%})")
    block_total = sum(timer.totals.values())
    print(f"\n{'module type (exclusive wall time)':<48}{'calls':>7}{'ms':>10}{'share':>8}")
    for kind, secs in sorted(timer.totals.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<48}{timer.calls[kind]:>7}{secs * 1e3:>10.1f}{secs / block_total:>8.1%}")
    print("(H2ASeg's own row: what runs outside the blocks: up-sampling, concatenation, the input split)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, among {', '.join(MODELS)}")
    ap.add_argument("--size", type=int, nargs=3, default=[128, 128, 64], help="window of released/paper")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--top", type=int, default=15, help="rows of the operator and convolution tables")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch 1")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        profile(name, tuple(args.size), args.top)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
