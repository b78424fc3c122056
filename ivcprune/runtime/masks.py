"""Attention masks for the compact (kept-token) layout of layers >= K, in each backend's convention."""

from __future__ import annotations

import torch


def compact_mask(real: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """4-D mask (B, 1, P, P) for a left-aligned compact layout.

    real: (B, P) bool, False on slots. A real query attends causally to real keys; a slot attends only to
    itself, so no row is fully masked (which would give NaNs in eager/sdpa).
    sdpa: boolean (True = attend); eager: additive (0 / dtype min).
    """
    p = real.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=real.device).tril()
    allowed = causal[None] & real[:, None, :] & real[:, :, None]
    allowed |= torch.eye(p, dtype=torch.bool, device=real.device)[None]
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=real.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def decode_mask(valid: torch.Tensor, q_len: int, implementation: str, dtype: torch.dtype):
    """The mask of a decode step over a cache of ``valid.shape[1] - q_len`` entries plus the q_len new rows.

    valid: (B, N) 1 on real cache entries and new tokens, 0 on slots and padding. Used for the layers of a later
    stage of a multi-stage selection, whose caches are shorter than the one the model built its mask for.
    flash_attention_2: the 2-D mask (None when nothing is masked); sdpa: boolean (B, 1, q, N); eager: additive.
    """
    valid = valid.bool()
    if implementation == "flash_attention_2":
        return None if bool(valid.all()) else valid.long()
    n = valid.shape[1]
    past = n - q_len
    causal = torch.arange(n, device=valid.device)[None, :] <= (past + torch.arange(q_len, device=valid.device))[:, None]
    allowed = (causal[None] & valid[:, None, :])[:, None]
    if implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
