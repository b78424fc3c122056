"""The implicit-visual-coordinate tokens of one image (docs/ALGORITHM.md §2 F2-F3), shared by IVC-Prune and "X + IVC"."""

from __future__ import annotations

import torch

from ivcprune.core.rope import ivc_scores, ivc_scores_applied, ivc_select
from ivcprune.core.selection import ImageRecord


def ivc_sets(ctx, image: ImageRecord, fraction: float, by_role: dict | None = None,
             rule: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """Span-relative (cos, sin) IVC sets: per group of the adapter's ``image_groups`` (the whole span without
    groups), the top ``fraction`` by cos and by sin; a group whose role is in ``by_role`` uses that fraction.

    ``rule``: "reference" scores every frequency with every position axis (the official rule); "applied" scores
    each frequency with the axis the model rotates it by (``adapter.rotary_axes()``; identical on 1-D RoPE).
    """
    a = image.start
    positions = ctx.positions[:, a:a + image.length].cpu()
    if rule == "reference":
        c, s = ivc_scores(positions, ctx.inv_freq)
    elif rule == "applied":
        axes = ctx.adapter.rotary_axes()
        if axes is None and positions.shape[0] > 1:
            raise NotImplementedError(f"ivc_rule='applied': the {ctx.adapter.family} adapter does not say which "
                                      "position axis rotates each frequency (rotary_axes)")
        c, s = ivc_scores(positions, ctx.inv_freq) if axes is None else \
            ivc_scores_applied(positions, ctx.inv_freq, axes)
    else:
        raise ValueError(f"ivc_rule must be 'reference' or 'applied', got {rule!r}")
    groups = ctx.adapter.image_groups(image)
    if groups is None:
        return ivc_select(c, s, None, fraction, fraction)
    by_fraction: dict[float, list[torch.Tensor]] = {}
    for group in groups:
        by_fraction.setdefault((by_role or {}).get(group.role, fraction), []).append(group.indices)
    if len(by_fraction) == 1:
        ((f, members),) = by_fraction.items()
        return ivc_select(c, s, members, f, f)
    parts = [ivc_select(c, s, members, f, f) for f, members in by_fraction.items()]
    return torch.cat([p[0] for p in parts]).unique(), torch.cat([p[1] for p in parts]).unique()
