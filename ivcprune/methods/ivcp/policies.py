"""IVC-Prune's selection policies (docs/ALGORITHM.md §2 F7, §4): how IVC, seeds and the foreground become kept tokens.

Each policy names the image view its foreground score F is computed on and combines, in span-relative indices,
the IVC set, the seeds (view-relative) and F into (kept, foreground). The arithmetic is in ``ivcprune.core.policies``;
the image structure comes from the adapter (``image_views``, ``image.grid``). The one path that computes queries,
IVC, seeds and F for every policy is ``IVCPrune.select_image``.
"""

from __future__ import annotations

import math

import torch

from ivcprune.core import policies as core
from ivcprune.core.selection import ImageRecord


class Budget:
    """BUDGET(rho) (Qwen): IVC u seeds first, then F fills round(rho L)."""

    view = "span"

    def combine(self, image: ImageRecord, views, ivc, seeds, scores, settings, picture) -> tuple:
        return core.budget(ivc, seeds, scores, image.length, settings.retention)


class Union:
    """UNION(f_fg) (LLaVA): top f_fg of F u seeds u IVC, no budget."""

    view = "span"

    def combine(self, image: ImageRecord, views, ivc, seeds, scores, settings, picture) -> tuple:
        return core.union(ivc, seeds, scores, image.length, settings.fg_fraction)


class ThumbBudget:
    """THUMB-BUDGET(rho) (InternVL): F on the thumbnail, up-sampled onto the (w_b, h_b) tiles."""

    view = "thumbnail"

    def combine(self, image: ImageRecord, views, ivc, seeds, scores, settings, picture) -> tuple:
        thumb0 = int(views["thumbnail"][0])
        return core.thumb_budget(ivc[ivc >= thumb0] - thumb0, ivc[ivc < thumb0], seeds, scores, image.grid,
                                 settings.retention)


class GlobalLocal:
    """GLOBAL-LOCAL (DeepSeek-VL2): F on the global view, mapped onto the local tiles; newlines and separator kept."""

    view = "global"

    def combine(self, image: ImageRecord, views, ivc, seeds, scores, settings, picture) -> tuple:
        glob, local = views["global"], views["local"]
        g0, l0, n_global = int(glob[0]), int(local[0]), glob.numel()
        g = math.isqrt(n_global)  # the view is g rows of g cells + a newline
        in_global = (ivc >= g0) & (ivc < g0 + n_global)
        global_sel, local_sel, fg = core.global_local(ivc[in_global] - g0, ivc[~in_global] - l0, seeds, scores,
                                                      picture, g, image.grid, settings.retention)
        kept = torch.cat([global_sel + g0, local_sel + l0, views["separator"]]).unique()
        foreground = torch.cat([fg + g0, core.global_to_local(fg, g, image.grid) + l0])
        return kept, foreground


POLICIES = {"budget": Budget(), "union": Union(), "thumb_budget": ThumbBudget(), "global_local": GlobalLocal()}
