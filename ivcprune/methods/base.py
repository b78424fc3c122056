"""The method interface: a small dataclass that decides which image tokens to keep; the runtime does the rest.

The contract between methods and the runtime is docs/ARCHITECTURE.md §5: a method declares the layer K it selects
at, the captures it needs (``captures``), and fills ``image.kept`` for each image in ``select_image``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter


@dataclass
class SampleContext:
    """Everything a method may read about one sample of a prefill (tensors on CPU or the model device)."""

    index: int
    valid: torch.Tensor  # (S,) bool
    positions: torch.Tensor  # (A, S) integer position ids as the model uses them
    images: list[ImageRecord]
    inv_freq: torch.Tensor
    settings: object  # the family's IVCPDefaults (K, budget, query offset, IVC fractions)
    adapter: FamilyAdapter
    values: torch.Tensor | None = None  # (S, H_kv, D) layer K-1 values, when the method asks for them
    extras: dict = field(default_factory=dict)  # method-specific captures (e.g. queries/keys for FastV)
    # "hidden" capture: the hidden states entering the selecting layer, one row per row of the current layout
    # (``rows``); at K = 0 they are the input embeddings (projected visual tokens and text embeddings)
    hidden: torch.Tensor | None = None  # (R, H)
    rows: torch.Tensor | None = None  # (R,) absolute prompt position of each layout row (-1: slot); None = arange(S)
    stage: int = 0  # index of the stage being selected (multi-stage methods; 0 for every single-stage method)

    def row_positions(self) -> torch.Tensor:
        """(R,) absolute position of each row of ``hidden`` (and of any capture taken on the current layout)."""
        return torch.arange(self.valid.shape[0]) if self.rows is None else self.rows

    def rows_of(self, positions) -> torch.Tensor:
        """Layout rows of absolute ``positions`` (each must be in the current layout)."""
        where = {int(p): r for r, p in enumerate(self.row_positions().tolist()) if p >= 0}
        return torch.tensor([where[int(p)] for p in positions], dtype=torch.long)

    def image_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.valid)
        for im in self.images:
            mask[im.start:im.end] = True
        return mask

    def text_positions(self) -> torch.Tensor:
        """Valid positions that belong to no image span."""
        return torch.nonzero(self.valid & ~self.image_mask(), as_tuple=False).flatten()

    def valid_positions(self) -> torch.Tensor:
        return torch.nonzero(self.valid, as_tuple=False).flatten()

    def queries(self, image: ImageRecord, offset: int) -> torch.Tensor:
        """Text queries of an image: valid non-image positions q >= E + offset.

        Project rule when that is empty: all valid non-image positions (the reference has none).
        """
        text = self.text_positions()
        q = text[text >= image.end + offset]
        return q if q.numel() else text


@dataclass
class PruningMethod:
    """Base class. ``layer`` is K, the first layer that sees only kept tokens (None: family default).

    ``captures`` declares what the runtime must record during the prefill for ``select_image``: "values" (layer
    K-1's value projection, in ``SampleContext.values``), "hidden" (the hidden states entering layer K, in
    ``SampleContext.hidden``) and/or "attention" (the method's ``attach_captures`` returns the hook handles; their
    captures arrive in ``SampleContext.extras``).

    ``selects_at`` says where the method selects (docs/ARCHITECTURE.md §5): "layer" (one layer K >= 1, the
    ``layer`` field), "pre-llm" (K = 0: before the first decoder layer, on the input embeddings) or "stages" (a
    schedule K1 < K2 < ... from ``schedule``, each stage narrowing the previous kept set via ``select_stage``).
    """

    layer: int | None = None

    name: ClassVar[str] = "base"
    captures: ClassVar[tuple[str, ...]] = ()
    selects_at: ClassVar[str] = "layer"
    min_layer: ClassVar[int] = 1  # 0 for methods that may select before the first decoder layer

    def __post_init__(self):
        if self.layer is not None and (not isinstance(self.layer, int) or isinstance(self.layer, bool)):
            raise ValueError(f"layer must be an int >= {self.min_layer} or None, got {self.layer!r}")
        if self.layer is not None and self.layer < self.min_layer:
            raise ValueError(f"layer must be >= {self.min_layer} (layers 0..K-1 see the full prompt), got {self.layer}")

    @property
    def needs_values(self) -> bool:
        return "values" in self.captures

    def attach_captures(self, runtime) -> list:
        """Hooks for captures other than values (removed with the ``prune`` block); default none."""
        return []

    def family_defaults(self, adapter: FamilyAdapter):
        """The family's defaults every method shares (K, budget, query offset): IVC-Prune's table."""
        from ivcprune.methods.ivcp.defaults import family_defaults

        return family_defaults(adapter.family)

    def resolve_layer(self, adapter: FamilyAdapter) -> int:
        k = self.family_defaults(adapter).default_layer(adapter.num_layers) if self.layer is None else self.layer
        if not self.min_layer <= k < adapter.num_layers:
            raise ValueError(
                f"{self.name}: layer K={k} is out of range for a model with {adapter.num_layers} decoder layers; "
                f"use {self.min_layer} <= K < {adapter.num_layers}"
            )
        if k == 0 and self.needs_values:
            raise ValueError(f"{self.name}: K = 0 has no layer K-1 to capture values from")
        return k

    def schedule(self, adapter: FamilyAdapter) -> list[int]:
        """The selecting layers K1 < K2 < ...: one stage, [resolve_layer(adapter)], unless the method is multi-stage."""
        return [self.resolve_layer(adapter)]

    def select_stage(self, ctx: SampleContext, image: ImageRecord, current: list[int]) -> list[int]:
        """Stage ``ctx.stage`` >= 1 of a multi-stage method: the kept absolute positions of ``image``, a subset of
        ``current`` (what the previous stage kept of it)."""
        raise NotImplementedError(f"{self.name} is a single-stage method")

    def is_identity(self) -> bool:
        """True when the method keeps every token: the runtime then leaves the model untouched."""
        return False

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        """Fill ``image.kept`` (absolute positions) and the role lists for one image."""
        raise NotImplementedError

    def label(self) -> str:
        return self.name


def check_retention(value: float | None, what: str = "retention") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
