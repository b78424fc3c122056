"""IVC-Prune: keep the implicit-visual-coordinate tokens plus the prompt's foreground (docs/ALGORITHM.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ivcprune.core.foreground import foreground_scores
from ivcprune.core.ranking import count
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext, check_retention
from ivcprune.methods.ivcp.defaults import IVC_RULES, IVCPDefaults
from ivcprune.methods.ivcp.ivc import ivc_sets
from ivcprune.methods.ivcp.policies import POLICIES
from ivcprune.methods.registry import register_method


@register_method("ivcp", suffix="IVCP", aliases=("ivc-prune", "ivcprune"), plus_ivc=False,
                 summary="IVC-Prune: IVC tokens + prompt foreground by value similarity (the paper)")
@dataclass
class IVCPrune(PruningMethod):
    """IVC-Prune with family defaults for every field left as None (docs/ALGORITHM.md §4.1).

    retention: image-token budget rho for budget policies (Qwen, InternVL); 1.0 keeps everything (exact no-op);
    on a UNION family (LLaVA) a value in (0, 1) switches to BUDGET(rho) with the same IVC sets and seeds.
    ivc_fraction: f_cos = f_sin per IVC group; seed_fraction: stage-1 seeds per image (at least 1);
    query_offset: delta, text queries start at E + delta; fg_fraction: foreground share of the UNION policy (LLaVA).
    ivc_rule: "reference" (default: each axis scored over all frequencies, the official rule) or "applied" (each
    frequency scored with the M-RoPE axis that rotates it: contiguous sections on Qwen2/2.5-VL, interleaved on
    Qwen3-VL; identical to "reference" on 1-D RoPE). docs/ALGORITHM.md §2 F2.
    """

    retention: float | None = None
    ivc_fraction: float | None = None
    seed_fraction: float | None = None
    query_offset: int | None = None
    fg_fraction: float | None = None
    ivc_rule: str | None = None

    name: ClassVar[str] = "ivcp"
    captures: ClassVar[tuple[str, ...]] = ("values",)

    def __post_init__(self):
        super().__post_init__()
        check_retention(self.retention)
        for field_name in ("ivc_fraction", "seed_fraction", "fg_fraction"):
            value = getattr(self, field_name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{field_name} must be in [0, 1], got {value!r}")
        if self.query_offset is not None and self.query_offset < 0:
            raise ValueError(f"query_offset must be >= 0, got {self.query_offset}")
        if self.ivc_rule is not None and self.ivc_rule not in IVC_RULES:
            raise ValueError(f"ivc_rule must be one of {IVC_RULES}, got {self.ivc_rule!r}")

    def is_identity(self) -> bool:
        return self.retention is not None and float(self.retention) >= 1.0

    def resolve(self, settings: IVCPDefaults) -> IVCPDefaults:
        """The family defaults with this method's explicit fields applied (a budget turns UNION into BUDGET)."""
        overrides = {
            k: getattr(self, k)
            for k in ("retention", "ivc_fraction", "seed_fraction", "query_offset", "fg_fraction", "ivc_rule")
            if getattr(self, k) is not None
        }
        resolved = replace(settings, **overrides)
        if resolved.policy == "union" and resolved.retention is not None:
            resolved = replace(resolved, policy="budget")
        return resolved

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        """queries -> IVC -> seeds -> F on the policy's view -> policy -> the record (one path for every family)."""
        settings = self.resolve(ctx.settings)
        policy = POLICIES.get(settings.policy)
        if policy is None:
            raise NotImplementedError(f"IVC-Prune policy '{settings.policy}' is not implemented")
        a = image.start
        views = ctx.adapter.image_views(image)
        queries = ctx.queries(image, settings.query_offset)
        if queries.numel() == 0 or ctx.values is None:
            image.kept = list(range(a, image.end))  # nothing to score against: leave the image unpruned
            return
        ivc_cos, ivc_sin = ivc_sets(ctx, image, settings.ivc_fraction, settings.ivc_fraction_by_role,
                                    settings.ivc_rule)
        ivc = torch.cat([ivc_cos, ivc_sin]).unique()
        view = views[policy.view]
        cols = view + a
        keys = cols if settings.keys == "view" else ctx.valid_positions()
        picture = ctx.adapter.picture_cells(image, policy.view)
        n_seed = max(1, count(view.numel() if picture is None else picture.numel(), settings.seed_fraction))
        seeds, scores = foreground_scores(ctx.values, queries, cols, keys, n_seed, seed_candidates=picture)
        seeds, scores = seeds.cpu(), scores.cpu()
        kept, foreground = policy.combine(image, views, ivc, seeds, scores, settings, picture)
        image.kept = (kept + a).tolist()
        image.ivc_cos = (ivc_cos + a).tolist()
        image.ivc_sin = (ivc_sin + a).tolist()
        image.seeds = sorted((view[seeds] + a).tolist())
        image.foreground = sorted((foreground + a).tolist())
