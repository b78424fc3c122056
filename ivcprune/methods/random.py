"""Random (comparison method): k_i image tokens drawn uniformly without replacement (docs/ALGORITHM.md §9).

The generator is a CPU ``torch.Generator`` seeded from (seed, image index within the sample), so the draw does not
depend on the device, the backend, the batch or the sample's place in it: a sample draws in a padded batch exactly
as alone, and ``ivcp run --batch-size N`` writes the same answers for every N. (Until issue 13's review the sample's
batch position was mixed in as well; at position 0, i.e. every row of a batch-1 run, the seed is unchanged.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod
from ivcprune.methods.registry import register_method

_MIX = 1_000_003


def draw_seed(seed: int, image: int) -> int:
    """One 63-bit seed per (seed, image index)."""
    return (int(seed) * _MIX * _MIX + int(image)) % (2**63 - 1)


@register_method("random", suffix="Random", summary="uniform random subset (seeded per image, batch-invariant)")
@dataclass
class RandomPrune(BudgetedMethod):
    seed: int = 0

    name: ClassVar[str] = "random"

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        index = next(i for i, im in enumerate(ctx.images) if im is image)
        gen = torch.Generator(device="cpu").manual_seed(draw_seed(self.seed, index))
        return torch.randperm(image.length, generator=gen)
