"""Uniform-grid baseline: a spatially even subsample of every image grid (ALGORITHM §9).

even(n, m) = {floor((i + 1/2) n / m) : i < m}. The lattice even(H, h') x even(W, w') with h' = round(H sqrt(rho)) and
w' = round(k / h') is then adjusted to exactly k tokens by dropping or adding tokens at evenly spread raster ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.ranking import count
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.baseline import BudgetedMethod


def even(n: int, m: int) -> list[int]:
    """m evenly spread indices in [0, n), in exact integer arithmetic."""
    return [((2 * i + 1) * n) // (2 * m) for i in range(max(0, m))]


def lattice(rows: int, cols: int, k: int, retention: float) -> list[int]:
    """Exactly k raster indices of a rows x cols grid, spread evenly."""
    n = rows * cols
    k = max(0, min(k, n))
    if k == 0:
        return []
    h = min(max(round(rows * math.sqrt(retention)), 1), rows)
    w = min(max(round(k / h), 1), cols)
    points = [r * cols + c for r in even(rows, h) for c in even(cols, w)]
    if len(points) > k:
        drop = set(even(len(points), len(points) - k))
        points = [p for i, p in enumerate(points) if i not in drop]
    elif len(points) < k:
        chosen = set(points)
        rest = [i for i in range(n) if i not in chosen]
        points = sorted(chosen | {rest[i] for i in even(len(rest), k - len(points))})
    return points


def span_shape(image: ImageRecord) -> tuple[int, int] | None:
    """(rows, cols) of a one-grid image from its recorded grid (the adapters fill it, e.g. Qwen's merged grid)."""
    if image.grid is not None and len(image.grid) >= 2 and image.length % int(image.grid[-1]) == 0:
        cols = int(image.grid[-1])
        return image.length // cols, cols
    return None


def grid_groups(ctx: SampleContext, image: ImageRecord) -> list[tuple[torch.Tensor, int, int]]:
    """(span-relative indices, rows, cols) of every grid in an image: the adapter's IVC groups (tiles), else the span."""
    groups = ctx.adapter.image_groups(image)
    if groups is None:
        span = torch.arange(image.length)
        shape = span_shape(image)
        if shape is not None:
            return [(span, *shape)]
        groups = [span]
    out = []
    for g in groups:
        side = math.isqrt(g.numel())
        rows, cols = (side, side) if side * side == g.numel() else (1, g.numel())
        out.append((g.long().cpu(), rows, cols))
    return out


@dataclass
class UniformGrid(BudgetedMethod):
    name: ClassVar[str] = "grid"

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        rho = self.rho(ctx)
        groups = grid_groups(ctx, image)
        kept = []
        for g, rows, cols in groups:
            k = self.budget(ctx, image) if len(groups) == 1 else count(g.numel(), rho)
            kept += g[lattice(rows, cols, k, rho)].tolist()
        image.kept = sorted(i + image.start for i in set(kept))

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        """An even subsample of size n over the tokens not in ``exclude``, in raster order."""
        taken = torch.zeros(image.length, dtype=torch.bool)
        taken[exclude.long().cpu()] = True
        rest = torch.nonzero(~taken, as_tuple=False).flatten()
        n = max(0, min(n, rest.numel()))
        return rest[even(rest.numel(), n)] if n else torch.empty(0, dtype=torch.long)
