"""Next-token choice for ``DeepseekVL2ForCausalLM.generate``: greedy, or sampled with T / top-k / top-p.

Kept separate from the model so the decoding rules (HF semantics) can be tested on plain logits.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF rule: logits of already-seen tokens are divided by ``penalty`` if positive, multiplied if negative."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, seen, picked)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf; always keeps the single best token."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    return logits


def choose_next_token(logits: torch.Tensor, seen: torch.Tensor, do_sample: bool, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) float logits -> (B,) token ids."""
    logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling")
    logits = filter_top_k_top_p(logits / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
