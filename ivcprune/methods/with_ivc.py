"""X + IVC: the family's IVC tokens first, then baseline X fills the same budget (ALGORITHM §9).

Isolates what the implicit visual coordinates add to any ranking: sel = IVC u the first max(0, k - |IVC|) tokens
of X outside IVC (sel = IVC when |IVC| >= k).
"""

from __future__ import annotations

import torch

from ivcprune.core.rope import ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.methods.baseline import BudgetedMethod


class WithIVC(PruningMethod):
    name = "with_ivc"

    def __init__(self, method: BudgetedMethod, ivc_fraction: float | None = None):
        if not isinstance(method, BudgetedMethod):
            raise TypeError(f"WithIVC wraps a budgeted baseline (FastV, RandomPrune, UniformGrid), got "
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
    def needs_values(self) -> bool:
        return self.method.needs_values

    def label(self) -> str:
        return f"{self.method.label()}+ivc"

    def is_identity(self) -> bool:
        return self.method.is_identity()

    def resolve_layer(self, adapter) -> int:
        return self.method.resolve_layer(adapter)

    def attach_captures(self, runtime) -> list:
        return getattr(self.method, "attach_captures", lambda rt: [])(runtime)

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        a, length = image.start, image.length
        fraction = ctx.settings.ivc_fraction if self.ivc_fraction is None else self.ivc_fraction
        c, s = ivc_scores(ctx.positions[:, a:a + length].cpu(), ctx.inv_freq)
        ivc_cos, ivc_sin = ivc_select(c, s, ctx.adapter.image_groups(image), fraction, fraction)
        ivc = torch.cat([ivc_cos, ivc_sin]).unique()
        n = max(0, self.method.budget(ctx, image) - ivc.numel())
        fill = self.method.fill(ctx, image, ivc, n)
        image.kept = sorted((torch.cat([ivc, fill.long()]).unique() + a).tolist())
        image.ivc_cos = (ivc_cos + a).tolist()
        image.ivc_sin = (ivc_sin + a).tolist()
