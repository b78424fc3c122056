"""Ablation "IVC tokens removed": every image token except the IVC tokens (the paper's IVC ablation).

The complement of IVC-Prune's own IVC sets (``ivc_sets``, the family's fractions: 10 % by cos + 10 % by sin for
Qwen) at layer K: the model loses exactly the tokens IVC-Prune would keep as implicit coordinates and keeps
everything else, so a drop against the unpruned model measures what those tokens carry. The budget is not a
parameter: the kept share is 1 - |IVC| / L (about 0.8 on Qwen); ``retention`` is accepted so that
``make_method(name, layer, retention)`` builds it like every other method, and is ignored. Structural tokens
(DeepSeek's newlines and separator) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import PruningMethod, SampleContext, check_retention
from ivcprune.methods.budgeted import structural_tokens
from ivcprune.methods.ivcp.ivc import ivc_sets
from ivcprune.methods.registry import register_method


@register_method("ivc_removed", suffix="IVCRemoved", summary="ablation: all image tokens but the IVC tokens",
                 aliases=("ivc-removed",), plus_ivc=False)
@dataclass
class IVCRemoved(PruningMethod):
    retention: float | None = None  # accepted for the common constructor, not used (see the module docstring)

    name: ClassVar[str] = "ivc_removed"

    def __post_init__(self):
        super().__post_init__()
        check_retention(self.retention)

    def select_image(self, ctx: SampleContext, image: ImageRecord) -> None:
        a = image.start
        ivc_cos, ivc_sin = ivc_sets(ctx, image, ctx.settings.ivc_fraction, ctx.settings.ivc_fraction_by_role)
        ivc = torch.cat([ivc_cos.long().cpu(), ivc_sin.long().cpu()]).unique()
        ivc = ivc[~torch.isin(ivc, structural_tokens(ctx, image))]
        keep = torch.ones(image.length, dtype=torch.bool)
        keep[ivc] = False
        image.kept = (torch.nonzero(keep, as_tuple=False).flatten() + a).tolist()
        image.ivc_cos = (ivc_cos.long().cpu() + a).tolist()  # recorded: these are the removed tokens
        image.ivc_sin = (ivc_sin.long().cpu() + a).tolist()
