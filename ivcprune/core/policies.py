"""Selection policies (ALGORITHM §2 F7): turn IVC sets, seeds and the foreground score into kept image tokens.

All inputs and outputs are span-relative index tensors; results are sorted and deduplicated.
"""

from __future__ import annotations

import torch

from ivcprune.core.ranking import count, rank, top_k


def _union(*parts: torch.Tensor) -> torch.Tensor:
    parts = [p.reshape(-1).long() for p in parts if p is not None and p.numel()]
    if not parts:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([p.cpu() for p in parts]).unique()


def fill_by_score(prio: torch.Tensor, scores: torch.Tensor, target: int) -> torch.Tensor:
    """prio, then the highest-scoring tokens not in prio until ``target`` tokens are selected (never fewer than prio)."""
    need = target - prio.numel()
    if need <= 0:
        return prio
    order = rank(scores.cpu())
    in_prio = torch.zeros(scores.numel(), dtype=torch.bool)
    in_prio[prio] = True
    extra = order[~in_prio[order]][:need]
    return _union(prio, extra)


def budget(ivc: torch.Tensor, seeds: torch.Tensor, scores: torch.Tensor, length: int, retention: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BUDGET(rho) (Qwen): prio = IVC u seeds; fill up to T = round(rho L) in descending-F order.

    Returns (selected, foreground fill). If |prio| >= T nothing is added (selection may exceed T).
    """
    prio = _union(ivc, seeds)
    selected = fill_by_score(prio, scores, count(length, retention))
    return selected, _difference(selected, prio)


def union(ivc: torch.Tensor, seeds: torch.Tensor, scores: torch.Tensor, length: int, fg_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UNION(f_fg) (LLaVA): top_k(F, round(f_fg L)) u seeds u IVC; there is no budget."""
    fg = top_k(scores.cpu(), count(length, fg_fraction))
    return _union(fg, seeds, ivc), _difference(_union(fg), _union(seeds, ivc))


def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.numel() == 0 or b.numel() == 0:
        return a
    return a[~torch.isin(a, b)]
