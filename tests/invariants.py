"""Family-independent helpers for the runtime invariant matrix (ALGORITHM §7).

Each family contributes a ``Case`` (how to load its tiny model, build prompts, and compute the prompt embeddings
and position ids for the oracle); the tests in test_runtime_*.py run the same checks on every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import ivcprune


@dataclass
class Case:
    family: str
    load: Callable  # (attn) -> (model, processor)
    inputs: Callable  # (processor, images, texts) -> BatchFeature
    embed: Callable  # (model, inputs) -> (inputs_embeds (B,S,H), prompt positions (A,B,S) or (B,S))
    image_size: tuple = (112, 84)
    other_size: tuple = (84, 140)


def greedy(model, inputs, steps, method=None):
    """Greedy generate (min_new_tokens pins the length); returns (sequences, scores, cache, trace)."""
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        if method is None:
            out = model.generate(**inputs, **kwargs)
            return out.sequences, out.scores, out.past_key_values, None
        with ivcprune.prune(model, method) as trace:
            out = model.generate(**inputs, **kwargs)
        return out.sequences, out.scores, out.past_key_values, trace


def cache_lengths(cache) -> list[int]:
    return [layer.keys.shape[2] for layer in cache.layers]


def _allowed_to_mask(allowed: torch.Tensor, impl: str, dtype) -> torch.Tensor:
    allowed = allowed[None, None]
    if impl == "sdpa":
        return allowed
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)


def rotary(text_model, hidden, positions):
    """Position embeddings from the model's own rotary module for (A, 1, N) or (1, N) position ids."""
    return text_model.rotary_emb(hidden, positions)


def oracle_logits(case: Case, model, inputs, keep: list[int], generated: list[int], layer: int):
    """One cache-less forward over prompt + generated tokens with a fixed keep set (sample 0, no padding).

    Layers < K see the full prompt causally, generated rows masked from pruned prompt positions; layers >= K run
    on keep + generated. Returns the logits that predict each generated token (len(generated) + 1 rows).
    """
    adapter = ivcprune.models.get_adapter(model)
    text = adapter.text_model
    impl = adapter.attn_implementation
    embeds, positions = case.embed(model, inputs)
    s = embeds.shape[1]
    gen = torch.tensor(generated, dtype=torch.long)[None]
    gen_embeds = text.get_input_embeddings()(gen) if gen.numel() else embeds[:, :0]
    hidden = torch.cat([embeds, gen_embeds], dim=1)
    n = hidden.shape[1]
    last = int(positions.max())
    gen_pos = torch.arange(last + 1, last + 1 + len(generated))
    if positions.ndim == 3:
        gen_pos = gen_pos.view(1, 1, -1).expand(positions.shape[0], 1, -1)
    else:
        gen_pos = gen_pos.view(1, -1)
    pos = torch.cat([positions, gen_pos], dim=-1)
    cos_sin = rotary(text, hidden, pos)

    kept = torch.zeros(n, dtype=torch.bool)
    kept[keep] = True
    kept[s:] = True
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal.clone()
    allowed[s:, :s] &= kept[:s][None, :]  # generated rows never see pruned prompt positions
    mask = _allowed_to_mask(allowed, impl, hidden.dtype)
    with torch.no_grad():
        for i in range(layer):
            hidden = text.layers[i](hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=None,
                                    past_key_values=None, use_cache=False)
        rows = torch.nonzero(kept).flatten()
        hidden = hidden[:, rows]
        cos_sin = tuple(t[:, rows] for t in cos_sin)
        m = rows.numel()
        mask = _allowed_to_mask(torch.ones(m, m, dtype=torch.bool).tril(), impl, hidden.dtype)
        for i in range(layer, len(text.layers)):
            hidden = text.layers[i](hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=None,
                                    past_key_values=None, use_cache=False)
        hidden = text.norm(hidden)
        logits = model.lm_head(hidden)
    first = len(keep) - 1  # the last prompt row predicts the first generated token
    return logits[0, first:]


class PositionRecorder:
    """Records the position ids every text-model call receives (decode steps included)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        self.calls.append(None if pos is None else pos.clone())

    def remove(self):
        self.handle.remove()
