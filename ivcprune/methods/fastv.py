"""FastV (comparison method): keep the image tokens that receive the most attention at layer K-1 (docs/ALGORITHM.md §9).

a[j] = mean_{r in R} mean_h softmax_k(q_{r,h} . k_{k,h} / sqrt(D))[j] over the valid keys k <= r, in float32, from
the post-RoPE (and post q/k-norm) queries and keys of layer K-1. They are captured by wrapping the attention
function for that one layer while the ``prune`` block is open; ``output_attentions`` is never used, so any backend
keeps its fast kernel.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from ivcprune.core.ranking import rank
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod, countable_tokens
from ivcprune.methods.registry import register_method

CAPTURE_KEY = "fastv_qk"


class AttentionTap:
    """Wraps the registered attention function of a backend; records (q, k) when ``target`` calls it.

    Every other module passes straight through. ``remove()`` restores the previous registration.
    """

    def __init__(self, runtime, target, impl: str, name: str = CAPTURE_KEY):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as registry

        targets = target if isinstance(target, dict) else {target: name}  # several layers: {module: capture name}
        self.registry, self.impl = registry, impl
        local = getattr(registry, "_local_mapping", {})
        self.previous = local.get(impl)
        registered = registry[impl] if impl in registry else None

        def tapped(module, query, key, value, *args, **kwargs):
            found = targets.get(module)
            if found is not None:
                runtime.capture(found, (query.detach(), key.detach()))
            # "eager" is not registered: every model file (the vision tower's too) has its own eager function
            inner = registered or sys.modules[type(module).__module__].eager_attention_forward
            return inner(module, query, key, value, *args, **kwargs)

        self.tapped = tapped
        registry[impl] = tapped

    def remove(self) -> None:
        if self.registry.get(self.impl) is not self.tapped:
            return
        if self.previous is not None:
            self.registry[self.impl] = self.previous
        else:
            del self.registry[self.impl]


def attention_received(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """a[S]: attention each key receives, averaged over the query rows and heads (float32).

    query: (H, S, D) post-RoPE; key: (H_kv, S, D); rows: query indices; valid: (S,) bool key mask.
    """
    heads, kv_heads, d = query.shape[0], key.shape[0], query.shape[-1]
    rows = rows.to(query.device)
    q = query.index_select(1, rows).float()
    k = key.float().repeat_interleave(heads // kv_heads, dim=0)
    logits = torch.einsum("hrd,hsd->hrs", q, k) / math.sqrt(d)
    positions = torch.arange(key.shape[1], device=query.device)
    allowed = valid.to(query.device)[None, :] & (positions[None, :] <= rows[:, None])
    probs = logits.masked_fill(~allowed[None], float("-inf")).softmax(dim=-1)
    return probs.mean(dim=(0, 1))


@register_method("fastv", suffix="FastV", summary="FastV: attention the text queries give each image token at K-1")
@dataclass
class FastV(BudgetedMethod):
    """``rows="text"``: R = the image's text queries (default); ``rows="last"``: R = the last prompt token."""

    rows: str = "text"

    name: ClassVar[str] = "fastv"
    captures: ClassVar[tuple[str, ...]] = ("attention",)

    def __post_init__(self):
        super().__post_init__()
        if self.rows not in ("text", "last"):
            raise ValueError(f"FastV rows must be 'text' or 'last', got {self.rows!r}")

    def label(self) -> str:
        return self.name if self.rows == "text" else f"{self.name}-last"

    def attach_captures(self, runtime) -> list:
        layer = runtime.layer - 1
        return [AttentionTap(runtime, runtime.adapter.layers[layer].self_attn, runtime.adapter.attn_implementation)]

    def scores(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        captured = ctx.extras.get(CAPTURE_KEY)
        if captured is None:
            raise RuntimeError("FastV: layer K-1 queries/keys were not captured during the prefill")
        query, key = captured
        if self.rows == "last":
            rows = ctx.valid_positions()[-1:]
        else:
            rows = ctx.queries(image, ctx.settings.query_offset)
        received = attention_received(query[ctx.index], key[ctx.index], rows, ctx.valid)
        return received[image.start:image.end].cpu()

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        """The countable tokens by attention received (structural tokens are not ranked; the softmax keeps them)."""
        countable = countable_tokens(ctx, image)
        return countable[rank(self.scores(ctx, image)[countable])]
