"""Comparison networks of the paper, one module per method, each registering itself by name.

Importing this package imports every module in this folder (found with :mod:`pkgutil`, in name order),
so a new method only needs a module here that calls ``register_network``; nothing else lists them.
MONAI adapters: ``unet3d``, ``resunet3d``, ``vnet``, ``unetr``, ``swinunetr`` (baselines.md A4).
"""

from __future__ import annotations

import importlib
import pkgutil


def _import_all() -> list[str]:
    """Import every module and subpackage of this package; return their names."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


MODULES: list[str] = _import_all()
