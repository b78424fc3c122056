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
    K-1's value projection, in ``SampleContext.values``) and/or "attention" (the method's ``attach_captures``
    returns the hook handles; their captures arrive in ``SampleContext.extras``).
    """

    layer: int | None = None

    name: ClassVar[str] = "base"
    captures: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if self.layer is not None and (not isinstance(self.layer, int) or isinstance(self.layer, bool)):
            raise ValueError(f"layer must be an int >= 1 or None, got {self.layer!r}")
        if self.layer is not None and self.layer < 1:
            raise ValueError(f"layer must be >= 1 (layers 0..K-1 see the full prompt), got {self.layer}")

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
        if not 1 <= k < adapter.num_layers:
            raise ValueError(
                f"{self.name}: layer K={k} is out of range for a model with {adapter.num_layers} decoder layers; "
                f"use 1 <= K < {adapter.num_layers}"
            )
        return k

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
