"""Shared shape of the budgeted comparison methods (docs/ALGORITHM.md §9): same K, per-image budget k_i = round(rho L_i), only the
ranking differs.

L_i counts the image's *countable* tokens: the span minus the adapter's ``structural_tokens`` (DeepSeek's newlines
and separator; none for the other families). Structural tokens are always kept, never ranked and never counted.

A budgeted method exposes ``fill(ctx, image, exclude, n)`` (its n best countable tokens outside ``exclude``) so that
``WithIVC`` can put the IVC tokens first and let the method fill the rest of the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivcprune.core.ranking import count
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext, check_retention


@dataclass
class BudgetedMethod(PruningMethod):
    """A ranking of image tokens cut at k_i = round(rho L_i); rho None means the family default."""

    retention: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_retention(self.retention)

    def is_identity(self) -> bool:
        return self.retention is not None and float(self.retention) >= 1.0

    def resolve_layer(self, adapter) -> int:
        """K, and a budget check before any work: a family without a default budget needs retention=."""
        if self.retention is None and self.family_defaults(adapter).retention is None:
            raise ValueError(f"{self.name}: the {adapter.family} family has no default image-token budget "
                             "(its IVC-Prune policy is UNION); pass retention= (registry: --retention)")
        return super().resolve_layer(adapter)

    def budget(self, ctx: SampleContext, image: ImageRecord) -> int:
        """k_i = round(rho * |countable tokens|)."""
        return count(image.length - structural_tokens(ctx, image).numel(), self.rho(ctx))

    def rho(self, ctx: SampleContext) -> float:
        rho = ctx.settings.retention if self.retention is None else self.retention
        if rho is None:
            raise ValueError(f"{self.name}: the {ctx.settings.family} family has no default image-token budget "
                             "(its IVC-Prune policy is UNION); pass retention=")
        return float(rho)

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        """Span-relative indices of the image's tokens, best first (structural tokens may appear: fill skips them)."""
        raise NotImplementedError

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        """The first n countable tokens of the ranking that are not in ``exclude`` (span-relative)."""
        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        order = self.ranking(ctx, image).cpu()
        taken = unavailable(ctx, image, exclude)
        return order[~taken[order]][:n]

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        chosen = self.fill(ctx, image, torch.empty(0, dtype=torch.long), self.budget(ctx, image))
        image.kept = sorted((torch.cat([chosen.long(), structural_tokens(ctx, image)]).unique() + image.start).tolist())


def structural_tokens(ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
    """The adapter's always-kept, never-counted tokens of an image (span-relative, CPU)."""
    return ctx.adapter.structural_tokens(image).long().cpu()


def countable_tokens(ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
    """Span-relative indices of the tokens a budget counts and a ranking orders, ascending."""
    return torch.nonzero(~unavailable(ctx, image, torch.empty(0, dtype=torch.long)), as_tuple=False).flatten()


def unavailable(ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor) -> torch.Tensor:
    """(L,) bool mask of the tokens a fill may not choose: ``exclude`` and the structural tokens."""
    taken = torch.zeros(image.length, dtype=torch.bool)
    taken[exclude.long().cpu()] = True
    taken[structural_tokens(ctx, image)] = True
    return taken
