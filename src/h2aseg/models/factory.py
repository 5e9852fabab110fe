"""Build a network from a :class:`~h2aseg.config.ModelConfig` (used by training and by prediction)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from h2aseg.config import BODY_COORDS, ConfigError, ModelConfig
from h2aseg.errors import H2ASegError
from h2aseg.models import registry
from h2aseg.models.registry import build_network

#: the input every network takes
CT_PET = ("ct", "pet")
#: which data setting adds which further input channel (:meth:`~h2aseg.config.DataConfig.input_layout`)
_SETTING = {"mirrored_pet": "data.mirror_pet", **dict.fromkeys(BODY_COORDS, "data.body_coords")}


def branch_inputs(layout: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input channels of ``layout`` that H2ASeg's CT and PET branches take: the CT branch the CT,
    the PET branch the PET and the mirrored PET, both the body-frame coordinates."""
    ct = tuple(i for i, name in enumerate(layout) if name == "ct" or name in BODY_COORDS)
    pet = tuple(i for i, name in enumerate(layout) if name in ("pet", "mirrored_pet") or name in BODY_COORDS)
    return ct, pet


def network_kwargs(cfg: ModelConfig, layout: Sequence[str] = CT_PET) -> dict[str, Any]:
    """Constructor keywords for ``cfg.name``: H2ASeg gets its own fields, other networks
    ``out_channels`` plus ``cfg.extra``. ``out_channels=None`` is left out: the network's default.
    ``layout`` (the data's input channels by name, :meth:`~h2aseg.config.DataConfig.input_layout`) sets
    H2ASeg's ``in_channels`` and ``branch_inputs`` when it is more than CT and PET; only H2ASeg takes more
    (``data.mirror_pet``, ``data.body_coords``)."""
    layout = tuple(layout)
    if layout[:2] != CT_PET or any(name not in _SETTING for name in layout[2:]):
        raise ConfigError(f"input channels must be CT, PET and any of {', '.join(_SETTING)}, got {layout}")
    out = {} if cfg.out_channels is None else {"out_channels": cfg.out_channels}
    if layout != CT_PET and cfg.name != "h2aseg":
        settings = ", ".join(dict.fromkeys(_SETTING[name] for name in layout[2:]))
        raise ConfigError(
            f"{settings}: only network 'h2aseg' takes further input channels (CT and PET only for "
            f"{cfg.name!r})"
        )
    if cfg.name != "h2aseg":
        return {**out, **cfg.extra}
    if layout != CT_PET:
        out["in_channels"] = len(layout)
        out["branch_inputs"] = branch_inputs(layout)
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
    cfg: ModelConfig, patch_size: Sequence[int] | None = None, layout: Sequence[str] = CT_PET
) -> nn.Module:
    """The registered network ``cfg.name`` built with :func:`network_kwargs` (``layout``: the data's input
    channels, ``cfg.data.input_layout()``).

    ``patch_size`` (the training patch, ``data.patch_size``) becomes ``img_size=tuple(patch_size)`` for a
    network whose constructor takes an ``img_size`` parameter (e.g. UNETR, whose position embeddings fix
    its input size), unless ``cfg.extra`` sets ``img_size`` itself.

    A constructor that rejects its arguments (``ValueError``/``TypeError``: the user's ``model`` section) is
    a :class:`~h2aseg.config.ConfigError` naming the section and the network.
    """
    _check_name(cfg)
    kwargs = network_kwargs(cfg, layout)
    if patch_size is not None and "img_size" not in kwargs and accepts_keyword(cfg.name, "img_size"):
        kwargs["img_size"] = tuple(int(v) for v in patch_size)
    try:
        return build_network(cfg.name, **kwargs)
    except H2ASegError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (network {cfg.name!r}): {e}") from e
