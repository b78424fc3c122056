"""Prompt-aware foreground scoring with value vectors (docs/ALGORITHM.md §2 F4-F6).

Values carry no RoPE, so text-to-image value similarity has no distance bias (q.k attention favours nearby and
late tokens). Stage 1 picks seeds from the text rows; stage 2 lets text and seed rows re-score every image token.
"""

from __future__ import annotations

import math

import torch

from ivcprune.core.ranking import top_k


def affinity(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """A[r, c] = mean_h softmax_{k in keys}(<V[r,h], V[k,h]> / sqrt(D))[c], with cols a subset of keys.

    values: (S, H_kv, D), any dtype (upcast to float32). rows, cols, keys: index tensors into S.
    Cost O(|rows| |keys| H D); the S x S matrix is never built.
    """
    v = values.to(torch.float32)
    rows, cols, keys = rows.to(v.device), cols.to(v.device), keys.to(v.device)
    d = v.shape[-1]
    vr = v.index_select(0, rows)  # (R, H, D)
    vk = v.index_select(0, keys)  # (K, H, D)
    logits = torch.einsum("rhd,khd->hrk", vr, vk) / math.sqrt(d)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("non-finite value similarity: remove padding rows and keys before scoring")
    probs = logits.softmax(dim=-1).mean(dim=0)  # (R, K)
    col_pos = _positions_in(keys, cols)
    return probs.index_select(1, col_pos)


def _positions_in(keys: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Where each entry of cols sits inside keys (cols must be a subset of keys)."""
    if keys.numel() == cols.numel() and bool(torch.equal(keys, cols)):
        return torch.arange(keys.numel(), device=keys.device)
    lookup = torch.full((int(max(keys.max(), cols.max())) + 1,), -1, dtype=torch.long, device=keys.device)
    lookup[keys] = torch.arange(keys.numel(), device=keys.device)
    pos = lookup[cols]
    if bool((pos < 0).any()):
        raise ValueError("affinity columns must be a subset of the softmax keys")
    return pos


def seeds(a_text: torch.Tensor, candidates: torch.Tensor, n_seed: int) -> torch.Tensor:
    """Stage 1: the n_seed best candidates by the row mean of the text affinity.

    a_text: (|Q|, |C|); candidates: column indices (into C) allowed as seeds. Returns column indices into C.
    """
    score = a_text.mean(dim=0)[candidates]
    return candidates[top_k(score, n_seed)]


def stage2(a_text: torch.Tensor, a_seed: torch.Tensor) -> torch.Tensor:
    """F = mean over all |Q| + n_seed rows of [A_t ; A_s]: every row weighs the same (not 50/50)."""
    return torch.cat([a_text, a_seed], dim=0).mean(dim=0)


def foreground_scores(
    values: torch.Tensor,
    queries: torch.Tensor,
    cols: torch.Tensor,
    keys: torch.Tensor,
    n_seed: int,
    seed_candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeds and the stage-2 score F for the columns ``cols`` (absolute indices into S).

    Returns (seed_cols, F): seed_cols are indices into ``cols``; F has one score per column.
    """
    cols = cols.to(values.device)
    a_text = affinity(values, queries, cols, keys)
    cand = torch.arange(cols.numel(), device=cols.device) if seed_candidates is None else seed_candidates.to(cols.device)
    n_seed = max(1, min(int(n_seed), cand.numel()))
    seed_cols = seeds(a_text, cand, n_seed)
    a_seed = affinity(values, cols[seed_cols], cols, keys)
    return seed_cols, stage2(a_text, a_seed)
