"""Custom variability ranges from a YAML file (``h2aseg synth --variability-file``), validated field by field.

The file starts from a level (``base``, default ``default``) and replaces the ranges it names::

    base: wide              # default | wide | out-of-range
    level: my-ranges        # the name recorded in phantom.json (default: the file's name without suffix)
    body: {width: [0.8, 1.2], fat_mm: [[2, 4], [40, 48]]}
    organs: {heart: {scale: [0.7, 1.3], shift_mm: [0, 15]}}
    uptake: {myocardium: [1.0, 15.0]}
    scanner: {pet_fwhm_mm: 8}

A range is one number (fixed), ``[lo, hi]``, a list of ``[lo, hi]`` intervals (a draw picks one, equal odds),
or ``null`` (today's model). Every error names the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from h2aseg.files import read_yaml_file
from h2aseg.synth.errors import PhantomError
from h2aseg.synth.variability import LEVELS, OrganRanges, OrganSet, Span, Variability, limits

TOP_KEYS = ("base", "level", "body", "organs", "uptake", "scanner")


class _Reader:
    """Validates the parts of one file; :meth:`error` names the file and the field."""

    def __init__(self, source: Path):
        self.source = source

    def error(self, name: str, message: str) -> PhantomError:
        return PhantomError(f"{self.source}: {name}: {message}")

    def mapping(self, raw: Any, name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(name, f"must be a mapping of {', '.join(allowed)}, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                raise self.error(
                    f"{name}.{key}" if name else str(key), f"unknown field; known: {', '.join(allowed)}"
                )
        return raw

    def number(self, raw: Any, name: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(float(raw)):
            raise self.error(name, f"must be a finite number, got {raw!r}")
        return float(raw)

    def span(self, raw: Any, name: str, limits: tuple[float, float]) -> Span | None:
        """``null``, a number, ``[lo, hi]`` or a list of ``[lo, hi]``, inside ``limits``."""
        if raw is None:
            return None
        if not isinstance(raw, list):
            raw = [raw, raw]
        items = raw if raw and all(isinstance(v, list) for v in raw) else [raw]
        parts = []
        for item in items:
            if not isinstance(item, list) or len(item) != 2:
                raise self.error(name, f"must be a number, [lo, hi] or a list of [lo, hi], got {raw!r}")
            lo, hi = self.number(item[0], name), self.number(item[1], name)
            if lo > hi:
                raise self.error(name, f"lo > hi in [{lo:g}, {hi:g}]")
            if lo < limits[0] or hi > limits[1]:
                raise self.error(name, f"[{lo:g}, {hi:g}] is outside the allowed {limits[0]:g}-{limits[1]:g}")
            parts.append((lo, hi))
        return Span(tuple(parts))

    def group(self, base: Any, raw: Any, name: str) -> Any:
        """``base`` (a ranges dataclass) with the spans ``raw`` names replaced."""
        allowed = tuple(f.name for f in fields(base))
        raw = self.mapping(raw, name, allowed)
        return replace(base, **{k: self.span(v, f"{name}.{k}", limits(base, k)) for k, v in raw.items()})

    def organs(self, base: OrganSet, raw: Any) -> OrganSet:
        allowed = tuple(f.name for f in fields(OrganSet))
        raw = self.mapping(raw, "organs", allowed)
        new: dict[str, OrganRanges] = {
            k: self.group(getattr(base, k), v, f"organs.{k}") for k, v in raw.items()
        }
        return replace(base, **new)


def variability_from_dict(raw: Any, source: Path) -> Variability:
    """A :class:`Variability` from a parsed file (``source`` names it in errors)."""
    rd = _Reader(source)
    raw = rd.mapping(raw, "", TOP_KEYS)
    base_name = raw.get("base", "default")
    if base_name not in LEVELS:
        raise rd.error("base", f"unknown level {base_name!r}; choose one of {', '.join(LEVELS)}")
    level = raw.get("level", source.stem)
    if not isinstance(level, str) or not level:
        raise rd.error("level", f"must be a non-empty name, got {level!r}")
    base = LEVELS[base_name]
    return Variability(
        level=level,
        body=rd.group(base.body, raw.get("body"), "body"),
        organs=rd.organs(base.organs, raw.get("organs")),
        uptake=rd.group(base.uptake, raw.get("uptake"), "uptake"),
        scanner=rd.group(base.scanner, raw.get("scanner"), "scanner"),
    )


def load_variability(path: str | Path) -> Variability:
    """Read and validate a variability file; raises :class:`PhantomError` naming the file and the field."""
    source = Path(path)
    return variability_from_dict(read_yaml_file(source, PhantomError, "variability file"), source)


def resolve_variability(level: str = "default", path: str | Path | None = None) -> Variability:
    """The named level, or the file's ranges (a file and a level other than ``default`` are exclusive)."""
    if path is not None:
        if level != "default":
            raise PhantomError(f"give a variability level ({level}) or a variability file ({path}), not both")
        return load_variability(path)
    if level not in LEVELS:
        raise PhantomError(f"unknown variability level {level!r}; choose one of {', '.join(LEVELS)}")
    return LEVELS[level]
