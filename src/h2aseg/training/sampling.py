"""Deterministic, resumable, rank-aware sampling of training cases and patch RNG seeds."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

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
    exceeds ``n``). Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, n: int, seed: int, *, num_samples: int | None = None, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("no training cases to sample from")
        self.n, self.seed, self.num_samples, self.rank, self.world = n, seed, num_samples, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 7))
        total = self.num_samples or self.n
        order: list[int] = []
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
