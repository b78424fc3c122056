"""IVC scores from RoPE position ids and inverse frequencies (docs/ALGORITHM.md §2 F2-F3).

The scores depend only on positions and frequencies, never on content: V(m) = mean_j cos(m w_j) finds keys whose
rotation is close to the identity ("real-axis" references), U(m) = mean_j sin(m w_j) those close to 90 degrees.
"""

from __future__ import annotations

import torch

from ivcprune.core.ranking import count, top_k


def default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    """w_j = theta^(-2j/dim) in float32, the standard RoPE table."""
    return 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def ivc_scores(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin IVC scores of L tokens.

    positions: integer tensor (A, L) (A = 3 for M-RoPE t/h/w, 1 for 1-D RoPE) or (L,).
    inv_freq: (d_r/2,) rotary inverse frequencies.
    Returns c[L], s[L]: the mean over the A axes and all frequencies of cos / sin(p * w_j), in float32 from the
    integer ids (never from a bf16 rotary table).
    """
    if positions.ndim == 1:
        positions = positions[None]
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32).to(positions.device)
    return _axis_mean(angles.cos().mean(dim=2)), _axis_mean(angles.sin().mean(dim=2))


def ivc_scores_applied(positions: torch.Tensor, inv_freq: torch.Tensor,
                       axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin IVC scores under the *applied* rule (docs/ALGORITHM.md §2 F2): frequency j is scored with the
    one position axis that rotates it inside attention, ``axes[j]``, instead of with every axis.

    positions: integer tensor (A, L); inv_freq: (F,); axes: (F,) integers in [0, A), e.g. Qwen2.5-VL's contiguous
    sections (t for j < 16, h for 16 <= j < 40, w after) or Qwen3-VL's interleaved layout (h on j = 1, 4, ...,
    w on j = 2, 5, ..., t on the rest). Returns c[L] = mean_j cos(p[axes[j], i] w_j) and s[L] likewise, in float32.
    """
    if positions.ndim == 1:
        positions = positions[None]
    axes = axes.to(torch.long).cpu()
    if axes.shape != inv_freq.shape or int(axes.min()) < 0 or int(axes.max()) >= positions.shape[0]:
        raise ValueError(f"axes must give one axis in [0, {positions.shape[0]}) per frequency "
                         f"({inv_freq.numel()}), got {axes.tolist()}")
    per_freq = positions[axes.to(positions.device)].to(torch.float32)  # (F, L): the position each frequency sees
    angles = per_freq * inv_freq.to(torch.float32).to(positions.device)[:, None]
    return angles.cos().mean(dim=0), angles.sin().mean(dim=0)


def _axis_mean(per_axis: torch.Tensor) -> torch.Tensor:
    """Mean over the A axes, summed in sorted order so that permuted axes (cell (r, c) vs (c, r)) tie exactly."""
    return per_axis.sort(dim=0).values.sum(dim=0) / per_axis.shape[0]


def ivc_select(
    c: torch.Tensor,
    s: torch.Tensor,
    groups: list[torch.Tensor] | None,
    f_cos: float,
    f_sin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group G (span-relative indices): top_k(c[G], round(f_cos |G|)) and top_k(s[G], round(f_sin |G|)).

    Returns the cos set and the sin set separately (sorted, span-relative); they may overlap.
    ``groups=None`` means one group, the whole span.
    """
    if groups is None:
        groups = [torch.arange(c.numel(), device=c.device)]
    cos_parts, sin_parts = [], []
    for g in groups:
        g = g.to(c.device)
        cos_parts.append(g[top_k(c[g], count(g.numel(), f_cos))])
        sin_parts.append(g[top_k(s[g], count(g.numel(), f_sin))])
    empty = torch.empty(0, dtype=torch.long, device=c.device)
    cos_set = torch.cat(cos_parts).unique() if cos_parts else empty
    sin_set = torch.cat(sin_parts).unique() if sin_parts else empty
    return cos_set, sin_set
