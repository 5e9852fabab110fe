"""Build a network from a :class:`~h2aseg.config.ModelConfig` (used by training and by prediction)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from h2aseg.config import ModelConfig
from h2aseg.models import registry
from h2aseg.models.registry import build_network


def network_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Constructor keywords for ``cfg.name``: H2ASeg gets its own fields, other networks
    ``out_channels`` plus ``cfg.extra``."""
    if cfg.name != "h2aseg":
        return {"out_channels": cfg.out_channels, **cfg.extra}
    kwargs: dict[str, Any] = {
        "variant": cfg.variant,
        "channels": tuple(cfg.channels),
        "window_size": tuple(cfg.window_size),
        "use_mcsa": cfg.use_mcsa,
        "use_tamw": cfg.use_tamw,
        "out_channels": cfg.out_channels,
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    for name in ("mcsa_levels", "attn_dropout", "dropout"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    return {**kwargs, **cfg.extra}


def accepts_keyword(name: str, keyword: str) -> bool:
    """Whether the network registered as ``name`` has a parameter called ``keyword`` (``**kwargs``: no)."""
    if name not in registry.list_networks():
        return False
    factory = registry.network_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature
        return False
    param = params.get(keyword)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def build_from_config(cfg: ModelConfig, patch_size: Sequence[int] | None = None) -> nn.Module:
    """The registered network ``cfg.name`` built with :func:`network_kwargs`.

    ``patch_size`` (the training patch, ``data.patch_size``) becomes ``img_size=tuple(patch_size)`` for a
    network whose constructor takes an ``img_size`` parameter (e.g. UNETR, whose position embeddings fix
    its input size), unless ``cfg.extra`` sets ``img_size`` itself.
    """
    kwargs = network_kwargs(cfg)
    if patch_size is not None and "img_size" not in kwargs and accepts_keyword(cfg.name, "img_size"):
        kwargs["img_size"] = tuple(int(v) for v in patch_size)
    return build_network(cfg.name, **kwargs)
