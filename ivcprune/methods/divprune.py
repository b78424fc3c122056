"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025,
arXiv 2503.02175): before the language model, keep the subset of visual tokens that maximizes the minimum pairwise
cosine distance, with the paper's greedy max-min solution.

d(i, j) = 1 - cos(e_i, e_j) on the projected visual embeddings e (the input embeddings of the image tokens).
Step 1 picks the token whose distance to its nearest other token is largest; each later step picks the token whose
distance to the nearest already-chosen token is largest; k_i = round(rho L_i) steps. Ties go to the lower index.

With an ``exclude`` set (``WithIVC``: the IVC tokens) the greedy starts from it as already chosen, so the fill is
the max-min continuation of the IVC set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import countable_tokens, unavailable
from ivcprune.methods.prellm import PreLLMMethod
from ivcprune.methods.registry import register_method


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """(L, L) 1 - cos, in float32 (float64 inputs stay float64)."""
    unit = torch.nn.functional.normalize(scoring_dtype(features), dim=-1)
    return 1.0 - unit @ unit.T


def scoring_dtype(x: torch.Tensor) -> torch.Tensor:
    """float32 scoring (the project's rule, docs/ALGORITHM.md §3); float64 inputs (tests) are kept as they are."""
    return x if x.dtype == torch.float64 else x.float()


def max_min_greedy(dist: torch.Tensor, candidates: torch.Tensor, n: int, seeds: torch.Tensor | None = None) -> list[int]:
    """Greedy max-min diversity: n indices out of ``candidates`` (1-D long) for an (L, L) distance matrix."""
    n = min(n, candidates.numel())
    if n <= 0:
        return []
    free = torch.zeros(dist.shape[0], dtype=torch.bool)
    free[candidates] = True
    chosen: list[int] = []
    if seeds is not None and seeds.numel():
        nearest = dist[seeds].min(dim=0).values.clone()
    else:  # first step: the distance of each candidate to its nearest other candidate
        others = dist.clone()
        others[:, ~free] = float("inf")
        others.fill_diagonal_(float("inf"))
        nearest = others.min(dim=1).values
        first = _argmax(nearest, free)
        chosen.append(first)
        free[first] = False
        nearest = dist[first].clone()
    while len(chosen) < n:
        pick = _argmax(nearest, free)
        chosen.append(pick)
        free[pick] = False
        nearest = torch.minimum(nearest, dist[pick])
    return chosen


def _argmax(scores: torch.Tensor, allowed: torch.Tensor) -> int:
    """The allowed index with the largest score, the lowest index on ties."""
    masked = torch.where(allowed, scores, torch.full_like(scores, float("-inf")))
    return int(torch.argmax(masked))


@register_method("divprune", suffix="DivPrune",
                 summary="DivPrune: greedy max-min cosine diversity of the projected visual tokens (K = 0)")
@dataclass
class DivPrune(PreLLMMethod):
    """No hyper-parameter besides the budget (paper: retained ratio; ``retention`` None = the family budget)."""

    name: ClassVar[str] = "divprune"

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        dist = cosine_distance(self.image_embeddings(ctx, image))
        free = torch.nonzero(~unavailable(ctx, image, exclude), as_tuple=False).flatten()
        return torch.tensor(max_min_greedy(dist, free, n, exclude.long().cpu()), dtype=torch.long)

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        return self.fill(ctx, image, torch.empty(0, dtype=torch.long), countable_tokens(ctx, image).numel())
