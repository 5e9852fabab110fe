"""Build a network from a :class:`~h2aseg.config.ModelConfig` (used by training and by prediction)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from h2aseg.config import ConfigError, ModelConfig
from h2aseg.errors import H2ASegError
from h2aseg.models import registry
from h2aseg.models.registry import build_network


def network_kwargs(cfg: ModelConfig, in_channels: int = 2) -> dict[str, Any]:
    """Constructor keywords for ``cfg.name``: H2ASeg gets its own fields, other networks
    ``out_channels`` plus ``cfg.extra``. ``out_channels=None`` is left out: the network's default.
    ``in_channels`` (the data's, :meth:`~h2aseg.config.DataConfig.input_channels`) is passed when it is not
    the usual 2; only H2ASeg takes another number (3: ``data.mirror_pet``)."""
    out = {} if cfg.out_channels is None else {"out_channels": cfg.out_channels}
    if in_channels != 2 and cfg.name != "h2aseg":
        raise ConfigError(
            f"data.mirror_pet: only network 'h2aseg' takes the mirrored PET as a further input channel, "
            f"not {cfg.name!r}"
        )
    if cfg.name != "h2aseg":
        return {**out, **cfg.extra}
    if in_channels != 2:
        out["in_channels"] = in_channels
    kwargs: dict[str, Any] = {
        "variant": cfg.variant,
        "channels": tuple(cfg.channels),
        "window_size": tuple(cfg.window_size),
        "use_mcsa": cfg.use_mcsa,
        "use_tamw": cfg.use_tamw,
        **out,
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


def resolved_out_channels(cfg: ModelConfig) -> int:
    """The number of output channels the network of ``cfg`` gets: ``cfg.out_channels`` (or
    ``cfg.extra["out_channels"]``) when set, else the network's default (H2ASeg: 1 for the ours and paper
    variants, 2 for the released one; otherwise the constructor's default). What the loss needs to match."""
    explicit = cfg.extra.get("out_channels", cfg.out_channels)
    if explicit is not None:
        return int(explicit)
    if cfg.name == "h2aseg":
        return 2 if cfg.variant == "released" else 1
    _check_name(cfg)
    try:
        param = inspect.signature(registry.network_factory(cfg.name)).parameters.get("out_channels")
    except (TypeError, ValueError):  # no introspectable signature
        param = None
    if param is None or not isinstance(param.default, int):
        raise ConfigError(f"model.out_channels: not set, and network {cfg.name!r} has no default; set it")
    return param.default


def _check_name(cfg: ModelConfig) -> None:
    if cfg.name not in registry.list_networks():
        raise ConfigError(
            f"model.name: unknown network {cfg.name!r}; registered: {', '.join(registry.list_networks())}"
        )


def build_from_config(
    cfg: ModelConfig, patch_size: Sequence[int] | None = None, in_channels: int = 2
) -> nn.Module:
    """The registered network ``cfg.name`` built with :func:`network_kwargs` (``in_channels``: the data's,
    ``cfg.data.input_channels()``).

    ``patch_size`` (the training patch, ``data.patch_size``) becomes ``img_size=tuple(patch_size)`` for a
    network whose constructor takes an ``img_size`` parameter (e.g. UNETR, whose position embeddings fix
    its input size), unless ``cfg.extra`` sets ``img_size`` itself.

    A constructor that rejects its arguments (``ValueError``/``TypeError``: the user's ``model`` section) is
    a :class:`~h2aseg.config.ConfigError` naming the section and the network.
    """
    _check_name(cfg)
    kwargs = network_kwargs(cfg, in_channels)
    if patch_size is not None and "img_size" not in kwargs and accepts_keyword(cfg.name, "img_size"):
        kwargs["img_size"] = tuple(int(v) for v in patch_size)
    try:
        return build_network(cfg.name, **kwargs)
    except H2ASegError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (network {cfg.name!r}): {e}") from e
