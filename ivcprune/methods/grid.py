"""Uniform-grid comparison method: a spatially even subsample of every image grid (docs/ALGORITHM.md §9).

even(n, m) = {floor((i + 1/2) n / m) : i < m}. The lattice even(H, h') x even(W, w') with h' = round(H sqrt(rho)) and
w' = round(k / h') is then adjusted to exactly k tokens by dropping or adding tokens at evenly spread raster ranks.

Grids come from the adapter's ``token_grids`` when it has them (DeepSeek: the global 14x14 and the local
(14 n_h) x (14 n_w) views, newline columns left out). The image budget k = round(rho * countable) is then split
exactly: k_g = round(rho * n_g) per grid, and the difference k - sum k_g goes to the largest grid (the earlier one
on a tie), spilling to the next largest when a grid would leave [0, n_g]. Structural tokens are kept on top.
Without ``token_grids`` the grids are the adapter's IVC groups (each tile at round(rho * T_t), as before) or the
recorded grid of a one-grid image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.ranking import count
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod, structural_tokens, unavailable
from ivcprune.methods.registry import register_method


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
    else:
        groups = [group.indices for group in groups]
    out = []
    for g in groups:
        side = math.isqrt(g.numel())
        rows, cols = (side, side) if side * side == g.numel() else (1, g.numel())
        out.append((g.long().cpu(), rows, cols))
    return out


def split_budget(k: int, sizes: list[int], rho: float) -> list[int]:
    """Per-grid budgets that sum to exactly min(k, sum(sizes)): round(rho n_g), then the difference goes to the
    largest grids first (stable on ties), each kept within [0, n_g]."""
    parts = [count(n, rho) for n in sizes]
    left = max(0, min(k, sum(sizes))) - sum(parts)
    for g in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if left == 0:
            break
        step = max(-parts[g], min(left, sizes[g] - parts[g]))
        parts[g] += step
        left -= step
    return parts


@register_method("grid", suffix="Grid", summary="an even spatial lattice of every image grid")
@dataclass
class UniformGrid(BudgetedMethod):
    name: ClassVar[str] = "grid"

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        rho = self.rho(ctx)
        grids = ctx.adapter.token_grids(image)
        if grids is not None:
            budgets = split_budget(self.budget(ctx, image), [g.numel() for g, _, _ in grids], rho)
        else:
            grids = grid_groups(ctx, image)
            budgets = ([self.budget(ctx, image)] if len(grids) == 1
                       else [count(g.numel(), rho) for g, _, _ in grids])
        kept = structural_tokens(ctx, image).tolist()
        for (g, rows, cols), k in zip(grids, budgets):
            kept += g.long().cpu()[lattice(rows, cols, k, rho)].tolist()
        image.kept = sorted(i + image.start for i in set(kept))

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        """An even subsample of size n over the countable tokens not in ``exclude``, in span order."""
        rest = torch.nonzero(~unavailable(ctx, image, exclude), as_tuple=False).flatten()
        n = max(0, min(n, rest.numel()))
        return rest[even(rest.numel(), n)] if n else torch.empty(0, dtype=torch.long)
