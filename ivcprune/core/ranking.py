"""Deterministic ranking and counting rules shared by every scorer (docs/ALGORITHM.md §3).

Raw ``torch.topk`` has an unspecified tie order that differs between devices, so every "top k" in the project
goes through :func:`top_k`: a stable descending sort, ties to the lower index.
"""

from __future__ import annotations

import torch


def count(n_base: int, fraction: float, *, minimum: int = 0, maximum: int | None = None) -> int:
    """round(n_base * fraction) with Python's half-to-even rounding in double precision, clamped.

    round(16.5) = 16 and round(82.5) = 82: floor(x + 0.5) would be wrong.
    """
    n = round(float(n_base) * float(fraction))
    n = max(minimum, n)
    upper = n_base if maximum is None else maximum
    return max(0, min(n, upper))


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices of ``scores`` ordered by (score descending, index ascending)."""
    if scores.ndim != 1:
        raise ValueError(f"rank expects a 1-D score vector, got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("non-finite score in ranking: padding rows or keys must be removed before scoring")
    return torch.sort(scores, descending=True, stable=True).indices


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first k entries of the stable descending ranking (indices into ``scores``)."""
    k = max(0, min(int(k), scores.numel()))
    return rank(scores)[:k]
