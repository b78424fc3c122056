"""PDrop (PyramidDrop, Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025, arXiv 2410.17247): a multi-stage schedule; at the end of each stage the image
tokens are ranked by the attention the last instruction token gives them, and a fraction lambda of them is kept.

Stages: selections at layers K1 < K2 < ... (paper, LLaVA-1.5-7B: 8, 16, 24 of 32 layers; here by default
round(N_L j / 4), j = 1..3). Stage j keeps n_j = round(lambda^j L_i) countable image tokens of each image (a subset
of stage j-1's), ranked by a[i] = mean_h softmax(q_last . k / sqrt(D))[i] at layer K_j - 1 over the current
(already narrowed) layout, in float32; ties go to the lower index. Text and structural tokens are always kept.

Budget (docs/ALGORITHM.md §9): ``retention`` rho is the FLOP-equivalent average fraction of image tokens over the
decoder layers (the linear term of the FLOP model; the papers' equal-budget convention):
    rho = [K1 + sum_j (K_j+1 - K_j) lambda^j] / N_L,   K_{m+1} = N_L.
With ``retention`` None lambda is ``ratio`` (paper: 0.5); with a retention, lambda solves that equation (bisection;
a rho below K1 / N_L cannot be met and raises). Per-stage counts round, so the realised average is within rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.ranking import count, rank
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext, check_retention
from ivcprune.methods.budgeted import BudgetedMethod, countable_tokens, structural_tokens
from ivcprune.methods.fastv import CAPTURE_KEY, AttentionTap, attention_received
from ivcprune.methods.registry import register_method


def default_layers(num_layers: int) -> list[int]:
    """round(N_L j / 4) for j = 1, 2, 3 (the paper's 8/16/24 of 32), clamped to [1, N_L - 1], duplicates dropped."""
    return sorted({min(max(round(num_layers * j / 4), 1), num_layers - 1) for j in (1, 2, 3)})


def image_fraction(layers: list[int], num_layers: int, lam: float) -> float:
    """Average fraction of the image tokens over the decoder layers for a schedule and lambda."""
    bounds = list(layers) + [num_layers]
    total = layers[0] + sum((bounds[j + 1] - bounds[j]) * lam ** (j + 1) for j in range(len(layers)))
    return total / num_layers


def solve_ratio(layers: list[int], num_layers: int, retention: float) -> float:
    """lambda in [0, 1] with image_fraction(layers, N_L, lambda) = retention."""
    floor = layers[0] / num_layers
    if retention < floor - 1e-12:
        raise ValueError(f"pdrop: retention {retention:g} is below K1 / N_L = {layers[0]}/{num_layers} (the layers "
                         "before the first stage see every token); use earlier stages (layers=) or a larger retention")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if image_fraction(layers, num_layers, mid) < retention else (lo, mid)
    return 0.5 * (lo + hi)


@register_method("pdrop", suffix="PDrop",
                 summary="PyramidDrop: multi-stage, last-instruction-token attention, lambda per stage")
@dataclass
class PDrop(BudgetedMethod):
    layers: tuple[int, ...] | None = None  # PDrop paper (LLaVA-1.5): stages at layers 8, 16, 24; None: N_L j/4
    ratio: float = 0.5  # PDrop paper: lambda = 0.5 (each stage keeps half of the previous stage's image tokens)

    name: ClassVar[str] = "pdrop"
    captures: ClassVar[tuple[str, ...]] = ("attention",)
    selects_at: ClassVar[str] = "stages"

    def __post_init__(self):
        super().__post_init__()
        if self.layer is not None:
            raise ValueError("pdrop is multi-stage: give the schedule with layers=(K1, K2, ...), not layer=")
        if self.layers is not None:
            self.layers = tuple(self.layers)
            if not self.layers or any(isinstance(k, bool) or not isinstance(k, int) for k in self.layers) or \
                    list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 1:
                raise ValueError(f"pdrop layers must be increasing ints >= 1, got {self.layers!r}")
        check_retention(self.ratio, "pdrop ratio")

    def is_identity(self) -> bool:
        return (float(self.retention) if self.retention is not None else float(self.ratio)) >= 1.0

    def schedule(self, adapter) -> list[int]:
        n = adapter.num_layers
        layers = list(self.layers) if self.layers is not None else default_layers(n)
        if layers[-1] >= n:
            raise ValueError(f"pdrop: stage layer {layers[-1]} is out of range for {n} decoder layers")
        return layers

    def resolve_layer(self, adapter) -> int:
        return self.schedule(adapter)[0]

    def lam(self, adapter) -> float:
        if self.retention is None:
            return float(self.ratio)
        return solve_ratio(self.schedule(adapter), adapter.num_layers, float(self.retention))

    def budget(self, ctx: SampleContext, image: ImageRecord) -> int:
        """n_j = round(lambda^j * countable tokens) for the stage being selected (j = ctx.stage + 1)."""
        n = image.length - structural_tokens(ctx, image).numel()
        return count(n, self.lam(ctx.adapter) ** (ctx.stage + 1))

    def attach_captures(self, runtime) -> list:
        targets = {runtime.adapter.layers[k - 1].self_attn: f"{CAPTURE_KEY}@{j}" for j, k in enumerate(runtime.schedule)}
        return [AttentionTap(runtime, targets, runtime.adapter.attn_implementation)]

    def scores(self, ctx: SampleContext, positions: torch.Tensor) -> torch.Tensor:
        """Attention of the last prompt row at layer K_j - 1 to the absolute ``positions`` (current layout)."""
        captured = ctx.extras.get(f"{CAPTURE_KEY}@{ctx.stage}")
        if captured is None:
            raise RuntimeError(f"pdrop: the queries/keys before stage {ctx.stage} were not captured")
        query, key = captured
        rows = ctx.row_positions()
        real = (rows >= 0) & ctx.valid[rows.clamp(min=0)]
        last = torch.nonzero(real, as_tuple=False).flatten()[-1:]  # the last instruction token's row
        received = attention_received(query[ctx.index], key[ctx.index], last, real)
        return received.cpu()[ctx.rows_of(positions)]

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        countable = countable_tokens(ctx, image)
        return countable[rank(self.scores(ctx, countable + image.start))]

    def stage_fill(self, ctx: SampleContext, image: ImageRecord, current: list[int], exclude: set[int],
                   n: int) -> list[int]:
        """The n best countable tokens of ``current`` outside ``exclude`` (absolute positions)."""
        structural = set((structural_tokens(ctx, image) + image.start).tolist())
        pool = torch.tensor([p for p in current if p not in structural and p not in exclude], dtype=torch.long)
        if n <= 0 or not pool.numel():
            return []
        return pool[rank(self.scores(ctx, pool))[:n]].tolist()

    def select_stage(self, ctx: SampleContext, image: ImageRecord, current: list[int]) -> list[int]:
        structural = [p for p in current if p in set((structural_tokens(ctx, image) + image.start).tolist())]
        return sorted(set(self.stage_fill(ctx, image, current, set(), self.budget(ctx, image))) | set(structural))
