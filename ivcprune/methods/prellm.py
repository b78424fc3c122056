"""Selection before the first decoder layer (K = 0): the shared base of DivPrune and CDPruner.

The runtime runs the selection in a pre-hook on decoder layer 0, where the hidden states are the input embeddings:
the projected visual tokens and the text embeddings (``SampleContext.hidden``, capture "hidden"). Kept tokens enter
the language model with their original position ids, so the IVC positions of "X + IVC" are the same as at any K;
there is no cache below layer 0 to cut. docs/ARCHITECTURE.md §5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod


@dataclass
class PreLLMMethod(BudgetedMethod):
    """A budgeted method that selects on the input embeddings; ``layer`` must be None or 0."""

    name: ClassVar[str] = "pre-llm"
    captures: ClassVar[tuple[str, ...]] = ("hidden",)
    selects_at: ClassVar[str] = "pre-llm"
    min_layer: ClassVar[int] = 0

    def __post_init__(self):
        super().__post_init__()
        if self.layer not in (None, 0):
            raise ValueError(f"{self.name} selects before the first decoder layer (K = 0): layer must be None or 0, "
                             f"got {self.layer!r}")

    def resolve_layer(self, adapter) -> int:
        if self.layer is None:
            return BudgetedMethod.resolve_layer(replace(self, layer=0), adapter)
        return super().resolve_layer(adapter)

    def embeddings(self, ctx: SampleContext, positions: torch.Tensor) -> torch.Tensor:
        """(n, H) float32 input embeddings at absolute ``positions``."""
        if ctx.hidden is None:
            raise RuntimeError(f"{self.name}: the input embeddings were not captured")
        return ctx.hidden[positions.to(ctx.hidden.device)].float().cpu()

    def image_embeddings(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        return self.embeddings(ctx, torch.arange(image.start, image.end))
