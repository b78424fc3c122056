"""X + IVC: the family's IVC tokens first, then comparison method X fills the same budget (docs/ALGORITHM.md §9).

Isolates what the implicit visual coordinates add to any ranking: sel = IVC u the first max(0, k - |IVC|) tokens
of X outside IVC (sel = IVC when |IVC| >= k).

IVC is IVC-Prune's ``ivc_sets`` over the adapter's groups with the family's fractions (DeepSeek: 10 % of the global
view, 15 % of each local row). Structural tokens (DeepSeek's newlines and separator) are kept, and an IVC token that is one of
them does not use up the budget: k counts the countable tokens only, and so does |IVC| above.
"""

from __future__ import annotations

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.methods.budgeted import BudgetedMethod, structural_tokens
from ivcprune.methods.ivcp.ivc import ivc_sets


class WithIVC(PruningMethod):
    name = "with_ivc"

    def __init__(self, method: BudgetedMethod, ivc_fraction: float | None = None):
        if not isinstance(method, BudgetedMethod):
            raise TypeError(f"WithIVC wraps a budgeted comparison method (FastV, RandomPrune, UniformGrid, ...), got "
                            f"{type(method).__name__}")
        if ivc_fraction is not None and not 0.0 <= float(ivc_fraction) <= 1.0:
            raise ValueError(f"ivc_fraction must be in [0, 1], got {ivc_fraction!r}")
        self.method = method
        self.ivc_fraction = ivc_fraction
        self.layer = method.layer
        super().__post_init__()

    def __repr__(self) -> str:
        return f"WithIVC({self.method!r}, ivc_fraction={self.ivc_fraction!r})"

    @property
    def captures(self) -> tuple[str, ...]:
        return self.method.captures

    def label(self) -> str:
        return f"{self.method.label()}+ivc"

    def is_identity(self) -> bool:
        return self.method.is_identity()

    @property
    def selects_at(self) -> str:
        return self.method.selects_at

    @property
    def min_layer(self) -> int:
        return self.method.min_layer

    def resolve_layer(self, adapter) -> int:
        return self.method.resolve_layer(adapter)

    def schedule(self, adapter) -> list[int]:
        return self.method.schedule(adapter)

    def select_stage(self, ctx: SampleContext, image: ImageRecord, current: list[int]) -> list[int]:
        """Later stages of a multi-stage X: the IVC tokens survive, X fills the stage's budget from the rest."""
        structural = set((structural_tokens(ctx, image) + image.start).tolist())
        ivc = set(image.ivc) & set(current)
        n = max(0, self.method.budget(ctx, image) - len(ivc - structural))
        fill = self.method.stage_fill(ctx, image, current, ivc, n)
        return sorted(ivc | set(fill) | (structural & set(current)))

    def attach_captures(self, runtime) -> list:
        return self.method.attach_captures(runtime)

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        a = image.start
        fraction = ctx.settings.ivc_fraction if self.ivc_fraction is None else self.ivc_fraction
        ivc_cos, ivc_sin = ivc_sets(ctx, image, fraction, ctx.settings.ivc_fraction_by_role)
        ivc_cos, ivc_sin = ivc_cos.long().cpu(), ivc_sin.long().cpu()
        ivc = torch.cat([ivc_cos, ivc_sin]).unique()
        structural = structural_tokens(ctx, image)
        counted = int((~torch.isin(ivc, structural)).sum())
        n = max(0, self.method.budget(ctx, image) - counted)
        fill = self.method.fill(ctx, image, ivc, n)
        image.kept = sorted((torch.cat([ivc, fill.long(), structural]).unique() + a).tolist())
        image.ivc_cos = (ivc_cos + a).tolist()
        image.ivc_sin = (ivc_sin + a).tolist()
