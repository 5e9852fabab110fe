"""Deterministic, resumable, rank-aware sampling of training cases and patch RNG seeds."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from h2aseg.data.layouts import Case
from h2aseg.data.preprocess import CaseCache
from h2aseg.data.transforms import case_to_dict


def mix_seed(*parts: int) -> int:
    """A 31-bit seed derived from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """Indices of one epoch, fixed by ``(seed, epoch)``; rank ``r`` of ``world`` takes every world-th.

    ``num_samples=None``: a shuffled pass over all ``n`` cases (padded by wrapping so every rank gets the
    same count); otherwise ``num_samples`` draws per epoch across all ranks (with replacement when it
    exceeds ``n``). With ``weights`` (one non-negative number per case), every draw is independent with
    probability proportional to its case's weight (:func:`lesion_case_weights`). Call :meth:`set_epoch`
    before each epoch.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        num_samples: int | None = None,
        rank: int = 0,
        world: int = 1,
        weights: Sequence[float] | None = None,
    ):
        if n < 1:
            raise ValueError("no training cases to sample from")
        if weights is not None and (len(weights) != n or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"sampling weights must be {n} non-negative numbers with a positive sum")
        self.n, self.seed, self.num_samples, self.rank, self.world = n, seed, num_samples, rank, world
        self.weights = None if weights is None else torch.tensor([float(w) for w in weights])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 7))
        total = self.num_samples or self.n
        order: list[int] = []
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        while len(order) < total:
            order += torch.randperm(self.n, generator=g).tolist()
        order = order[:total]
        per_rank = -(-total // self.world)
        order += order[: per_rank * self.world - total]  # pad so all ranks step equally
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return -(-(self.num_samples or self.n) // self.world)


def lesion_case_weights(has_lesion: Sequence[bool], fraction: float) -> list[float] | None:
    """Per-case weights that make a ``fraction`` of the draws studies with lesions (ours, not the paper's).

    The studies with lesions share ``fraction`` equally, the lesion-free ones ``1 - fraction``. ``None``
    (uniform sampling) when every study, or none, has a lesion: there is nothing to re-balance.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"lesion_case_fraction must lie in [0, 1], got {fraction}")
    n_pos = sum(bool(h) for h in has_lesion)
    n_neg = len(has_lesion) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    return [fraction / n_pos if h else (1.0 - fraction) / n_neg for h in has_lesion]


class PatchDataset(Dataset):
    """Item ``i``: the training crops of case ``i`` (a list of ``{"image", "label"}`` dicts).

    The random transforms are re-seeded from ``(seed, epoch, i)`` at every access, so a resumed run
    and a run with data-loading workers draw exactly the same patches.
    """

    def __init__(self, cases: list[Case], cache: CaseCache, transform: object, seed: int) -> None:
        self.cases, self.cache, self.transform, self.seed = cases, cache, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> list[dict]:
        pc = self.cache.get(self.cases[i])
        self.transform.set_random_state(seed=mix_seed(self.seed, self.epoch, i))  # type: ignore[attr-defined]
        crops = self.transform(case_to_dict(pc))  # type: ignore[operator]
        crops = crops if isinstance(crops, list) else [crops]
        return [{"image": c["image"], "label": c["label"]} for c in crops]
