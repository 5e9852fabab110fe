"""Build a network from a :class:`~h2aseg.config.ModelConfig` (used by training and by prediction)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from h2aseg.config import ModelConfig
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


def build_from_config(cfg: ModelConfig) -> nn.Module:
    """The registered network ``cfg.name`` built with :func:`network_kwargs`."""
    return build_network(cfg.name, **network_kwargs(cfg))
