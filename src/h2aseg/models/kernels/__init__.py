"""Which kernel computes what: the one place where H2ASeg chooses between its fast paths and the reference.

The modules of :mod:`h2aseg.models` state the mathematics (attention, instance norm -> PReLU -> conv) and
call the functions below, which pick how to compute it:

- :func:`attention` (softmax attention of BDSA, paper eq. 1), from :mod:`~h2aseg.models.kernels.sdpa`:
  the plain formulation :func:`~h2aseg.models.kernels.sdpa.softmax_attention` on the reference path
  (``impl="reference"``); on the fast path (``impl="fast"``, the default) the fastest exact route for the
  call, which is PyTorch's fused kernel only where that is fastest (:func:`attention` lists the routes).
- :func:`norm_prelu`, :func:`norm_prelu_conv` (the blocks' ``InstanceNorm3d -> PReLU (-> Conv3d)``), from
  :mod:`~h2aseg.models.kernels.norm_act`: the modules one by one on the reference path; otherwise one fused
  autograd node on the devices in :data:`FUSED_DEVICES`, when the node supports the layers.
- :func:`conv3d`, from :mod:`~h2aseg.models.kernels.tiny_conv`: float32 convs of tiny maps under bf16 on
  the CPU. A correctness fix for a PyTorch bug, not a speed path: it applies on both paths.

Every fast path equals its reference up to float rounding (tests/models/kernels), with the same
dropout masks for the same seed. The fast paths call a few non-public PyTorch operators; where this
PyTorch lacks one (``PRIVATE_OPS_AVAILABLE`` of the kernel module is False), the public route runs.

Forcing the reference path everywhere (for debugging, or to compare against the fast path):

- set the environment variable ``H2ASEG_REFERENCE_KERNELS=1`` before ``h2aseg`` is imported, or
- call :func:`set_reference_kernels` ``(True)``, or use ``with use_reference_kernels(): ...``.

The reference path also makes :class:`~h2aseg.models.tamw.TAMW` evaluate eqs. (2)-(4) literally instead
of its factored form. Attention alone can be switched per module with ``impl="reference"``
(``H2ASeg(attention="reference")``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from h2aseg.models.kernels import norm_act, sdpa
from h2aseg.models.kernels.norm_act import Branch
from h2aseg.models.kernels.tiny_conv import conv3d

__all__ = [
    "ATTENTION_ALIASES",
    "ATTENTION_IMPLS",
    "FUSED_DEVICES",
    "REFERENCE_ENV",
    "attention",
    "conv3d",
    "norm_prelu",
    "norm_prelu_conv",
    "reference_kernels",
    "resolve_attention_impl",
    "set_reference_kernels",
    "use_reference_kernels",
]

#: environment variable that forces the reference path when set to 1/true/yes/on (read at import)
REFERENCE_ENV = "H2ASEG_REFERENCE_KERNELS"

#: devices on which the fused norm node runs. CUDA keeps the module path until the fused one has been
#: checked there (``benchmarks/cuda_check.py`` compares the two); add "cuda" once it has.
FUSED_DEVICES: set[str] = {"cpu"}

#: values of the per-module attention switch (``impl``, ``H2ASeg(attention=...)``): ``"fast"``, the
#: fastest exact route for each call (:func:`attention`), or ``"reference"``, the plain formulation
ATTENTION_IMPLS = ("fast", "reference")

#: deprecated names still accepted (old configs and checkpoints): ``"sdpa"`` was ``"fast"``'s name, though
#: the route it takes is often not PyTorch's ``scaled_dot_product_attention``
ATTENTION_ALIASES = {"sdpa": "fast"}

_reference = os.environ.get(REFERENCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def reference_kernels() -> bool:
    """Whether the reference path is forced everywhere."""
    return _reference


def set_reference_kernels(enabled: bool) -> bool:
    """Force the reference path everywhere (``True``) or let the fast paths run (``False``); returns the
    previous setting."""
    global _reference
    previous, _reference = _reference, bool(enabled)
    return previous


@contextmanager
def use_reference_kernels(enabled: bool = True) -> Iterator[None]:
    """``with use_reference_kernels(): ...`` runs the block on the reference path (restored afterwards)."""
    previous = set_reference_kernels(enabled)
    try:
        yield
    finally:
        set_reference_kernels(previous)


def resolve_attention_impl(impl: str, *, stacklevel: int = 2) -> str:
    """``impl`` as one of :data:`ATTENTION_IMPLS`: a deprecated alias (:data:`ATTENTION_ALIASES`, e.g.
    ``"sdpa"`` in an old config or checkpoint) is mapped to its new name with a ``DeprecationWarning``;
    anything else raises ``ValueError``."""
    if impl in ATTENTION_ALIASES:
        new = ATTENTION_ALIASES[impl]
        warnings.warn(
            f"attention implementation {impl!r} is deprecated; it means {new!r} (the fastest exact route, "
            f"not always PyTorch's fused kernel): use {new!r}",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return new
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {ATTENTION_IMPLS}")
    return impl


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    key_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "fast",
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T * scale) v`` over the token axis, with attention-weight dropout.

    ``q, k``: ``(b, h, n, d_qk)``; ``v``: ``(b, h, n, d_v)``; ``key_mask``: bool ``(b, n)``, True where a
    key is a real voxel (False for padding). Returns ``(b, h, n, d_v)``.

    ``impl="reference"`` (or the forced reference path) is the plain einsum/softmax formulation
    (:func:`~h2aseg.models.kernels.sdpa.softmax_attention`). ``impl="fast"`` takes, call by call, the
    fastest route that gives the same result ("training" below means autograd is recording: grad mode on
    and an input that requires grad, whatever the module's train/eval mode):

    - attention-weight dropout (``dropout_p > 0``: the released variant in train mode), any device: the
      recomputing node :func:`~h2aseg.models.kernels.sdpa.recomputed_attention` (PyTorch's kernels draw one
      Bernoulli per element and keep the weights);
    - training on the CPU without dropout: the same recomputing node (PyTorch's fused kernels are several
      times slower on the CPU at H2ASeg's head widths);
    - bf16/fp16 inference on the CPU: :func:`~h2aseg.models.kernels.sdpa.chunked_attention`, softmax
      attention over chunks of windows small enough to stay in cache;
    - everything else, i.e. CUDA training and inference without dropout, and float32 inference on the CPU:
      PyTorch's ``scaled_dot_product_attention`` (:func:`~h2aseg.models.kernels.sdpa.torch_attention`),
      which picks its own fused backend.

    Where this PyTorch lacks the node's private operator (``sdpa.PRIVATE_OPS_AVAILABLE`` False), dropout
    takes the plain formulation and CPU training PyTorch's kernel. ``"sdpa"`` is a deprecated alias of
    ``"fast"``.
    """
    if impl not in ATTENTION_IMPLS:
        impl = resolve_attention_impl(impl)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if impl == "reference" or _reference:
        return sdpa.softmax_attention(q, k, v, scale, mask, dropout_p)
    cpu = q.device.type == "cpu"
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if dropout_p > 0.0 or (grad and cpu):
        if sdpa.PRIVATE_OPS_AVAILABLE:
            return sdpa.recomputed_attention(q, k, v, scale, mask, dropout_p)
        if dropout_p > 0.0:  # the same mask as the node draws, from public operators
            return sdpa.softmax_attention(q, k, v, scale, mask, dropout_p)
    if cpu and q.dtype in (torch.bfloat16, torch.float16) and not grad:
        return sdpa.chunked_attention(q, k, v, scale, mask)
    return sdpa.torch_attention(q, k, v, scale, mask)


def _fused_norm(x: torch.Tensor) -> bool:
    return not _reference and norm_act.PRIVATE_OPS_AVAILABLE and x.device.type in FUSED_DEVICES


def norm_prelu(x: torch.Tensor, norm: nn.InstanceNorm3d, *prelus: nn.PReLU) -> tuple[torch.Tensor, ...]:
    """``tuple(prelu(norm(x)) for prelu in prelus)``, the normalisation computed once.

    The fused node where it applies (:func:`~h2aseg.models.kernels.norm_act.supports`: a parameter-free
    instance norm, single-parameter PReLUs) on :data:`FUSED_DEVICES`; otherwise the modules one by one.
    """
    if _fused_norm(x) and norm_act.supports(x, norm, prelus):
        return norm_act.fused_norm_prelu(x, norm, *prelus)
    return norm_act.reference_norm_prelu(x, norm, *prelus)


def norm_prelu_conv(x: torch.Tensor, norm: nn.InstanceNorm3d, *branches: Branch) -> tuple[torch.Tensor, ...]:
    """``tuple(conv(prelu(norm(x))) for prelu, conv in branches)``, normalised once; a branch
    ``(prelu, dropout, conv)`` has a ``Dropout3d`` between its PReLU and conv.

    The fused node (no activation kept for backward) where it applies
    (:func:`~h2aseg.models.kernels.norm_act.supports`) on :data:`FUSED_DEVICES`; otherwise the modules one
    by one.
    """
    prelus, convs = [b[0] for b in branches], [b[-1] for b in branches]
    if _fused_norm(x) and norm_act.supports(x, norm, prelus, convs):  # type: ignore[arg-type]
        return norm_act.fused_norm_prelu_conv(x, norm, *branches)
    return norm_act.reference_norm_prelu_conv(x, norm, *branches)
