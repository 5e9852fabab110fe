"""Every network by name: ``register_network`` / ``build_network`` / ``list_networks``.

All registered networks take ``(B, 2, X, Y, Z)`` (channel 0 = CT, channel 1 = PET) and return logits:
a list of maps, finest first, when they use deep supervision in training mode, one map otherwise.
A network whose method adds its own term to the segmentation loss defines ``auxiliary_loss()``, which
returns that term for its last training forward (or ``None``); the trainer adds it (SDB's similarity loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a network class or factory under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_networks() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_REGISTRY)


def network_factory(name: str) -> Callable[..., nn.Module]:
    """The class or factory registered as ``name`` (to read its signature)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` with constructor keyword arguments ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)
