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
