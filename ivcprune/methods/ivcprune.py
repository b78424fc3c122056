"""IVC-Prune: keep the implicit-visual-coordinate tokens plus the prompt's foreground (ALGORITHM §2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ivcprune.core import policies
from ivcprune.core.foreground import foreground_scores
from ivcprune.core.ranking import count
from ivcprune.core.rope import ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext, check_retention
from ivcprune.models.base import FamilySettings


@dataclass
class IVCPrune(PruningMethod):
    """IVC-Prune with family defaults for every field left as None (ALGORITHM §4.1).

    retention: image-token budget rho for budget policies (Qwen, InternVL); 1.0 keeps everything (exact no-op).
    ivc_fraction: f_cos = f_sin per IVC group; seed_fraction: stage-1 seeds per image (at least 1);
    query_offset: delta, text queries start at E + delta; fg_fraction: foreground share of the UNION policy (LLaVA).
    """

    retention: float | None = None
    ivc_fraction: float | None = None
    seed_fraction: float | None = None
    query_offset: int | None = None
    fg_fraction: float | None = None

    name: ClassVar[str] = "ivcp"
    needs_values: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        check_retention(self.retention)
        for field_name in ("ivc_fraction", "seed_fraction", "fg_fraction"):
            value = getattr(self, field_name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{field_name} must be in [0, 1], got {value!r}")
        if self.query_offset is not None and self.query_offset < 0:
            raise ValueError(f"query_offset must be >= 0, got {self.query_offset}")

    def is_identity(self) -> bool:
        return self.retention is not None and float(self.retention) >= 1.0

    def resolve(self, settings: FamilySettings) -> FamilySettings:
        """The family settings with this method's explicit fields applied."""
        overrides = {
            k: getattr(self, k)
            for k in ("retention", "ivc_fraction", "seed_fraction", "query_offset", "fg_fraction")
            if getattr(self, k) is not None
        }
        return replace(settings, **overrides)

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        settings = self.resolve(ctx.settings)
        selector = _POLICIES.get(settings.policy)
        if selector is None:
            selector = getattr(ctx.adapter, f"select_{settings.policy}", None)
        if selector is None:
            raise NotImplementedError(f"IVC-Prune policy '{settings.policy}' is not implemented")
        selector(ctx, image, settings)


def span_selection(ctx: SampleContext, image: ImageRecord, settings: FamilySettings) -> None:
    """BUDGET and UNION: IVC over the image's groups, foreground over the span (Qwen, LLaVA)."""
    a, length = image.start, image.length
    cols = torch.arange(a, a + length)
    queries = ctx.queries(image, settings.query_offset)
    if queries.numel() == 0 or ctx.values is None:
        image.kept = cols.tolist()  # nothing to score against: leave the image unpruned
        return
    c, s = ivc_scores(ctx.positions[:, a:a + length].cpu(), ctx.inv_freq)
    ivc_cos, ivc_sin = ivc_select(c, s, ctx.adapter.image_groups(image), settings.ivc_fraction, settings.ivc_fraction)
    keys = cols if settings.keys == "span" else ctx.valid_positions()
    n_seed = max(1, count(length, settings.seed_fraction))
    seed_cols, fg = foreground_scores(ctx.values, queries, cols, keys, n_seed)
    seed_cols, fg = seed_cols.cpu(), fg.cpu()
    ivc = torch.cat([ivc_cos, ivc_sin]).unique()
    if settings.policy == "budget":
        selected, fill = policies.budget(ivc, seed_cols, fg, length, settings.retention)
    else:
        selected, fill = policies.union(ivc, seed_cols, fg, length, settings.fg_fraction)
    image.kept = (selected + a).tolist()
    image.ivc_cos = (ivc_cos + a).tolist()
    image.ivc_sin = (ivc_sin + a).tolist()
    image.seeds = sorted((seed_cols + a).tolist())
    image.foreground = sorted((fill + a).tolist())


_POLICIES = {"budget": span_selection, "union": span_selection}
