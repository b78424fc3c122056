"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv 2502.11494): keep the image tokens least duplicated with a few pivot tokens.

At layer K (paper: K = 2) the hidden states entering the layer, passed through the text model's final norm, are
compared by cosine similarity. Pivots: the ``pivot_image`` image tokens and the ``pivot_text`` text tokens after
the image with the largest L1 norm of their layer K-1 keys (post-RoPE, as the attention function receives them,
all KV heads concatenated). The image pivots are kept; then each pivot in turn (image pivots first, then text
pivots, each by norm descending) takes its quota of the still-unchosen image tokens with the *lowest* cosine
similarity to it. The quotas split the rest of the budget evenly (the first pivots take one more when it does not
divide), so exactly k_i = round(rho L_i) tokens are kept; the paper's code uses floor(k / #pivots) per pivot and
keeps slightly fewer. Ties go to the lower index. Structural tokens are kept and not counted (``BudgetedMethod``).

``fill(ctx, image, exclude, n)`` runs the same procedure on the tokens outside ``exclude``, so "dart+ivc" keeps the
IVC tokens and lets DART fill the rest of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ivcprune.core.ranking import rank
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod, countable_tokens, unavailable
from ivcprune.methods.fastv import CAPTURE_KEY, AttentionTap
from ivcprune.methods.registry import register_method

PAPER_LAYER = 2  # DART paper, Sec. 4 / official LLaVA scripts: tokens reduced after the second decoder layer


def duplication_fill(features: torch.Tensor, pivot_features: list[torch.Tensor], first: list[int],
                     candidates: list[int], n: int) -> list[int]:
    """DART's greedy de-duplication on plain tensors.

    features: (L, H) normalised hidden states of the image tokens; ``first``: the image pivots (kept first, in
    order); ``pivot_features``: one (H,) vector per pivot (image pivots first, then text pivots); ``candidates``:
    the indices that may be chosen. Returns n indices: ``first``, then each pivot's quota of the candidates least
    similar to it (cosine), quotas split evenly over the pivots (earlier pivots take the remainder).
    """
    chosen = list(first[:n])
    rest = n - len(chosen)
    if rest <= 0 or not pivot_features:
        return chosen
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    quota, extra = divmod(rest, len(pivot_features))
    taken = set(chosen)
    for i, pivot in enumerate(pivot_features):
        want = quota + (1 if i < extra else 0)
        pool = [c for c in candidates if c not in taken]
        if want <= 0 or not pool:
            continue
        sim = unit[pool] @ torch.nn.functional.normalize(pivot.float(), dim=-1)
        picks = [pool[j] for j in rank(-sim)[:want].tolist()]
        chosen.extend(picks)
        taken.update(picks)
    return chosen


@register_method("dart", suffix="DART", summary="DART: image tokens least duplicated (cosine) with key-norm pivots")
@dataclass
class DART(BudgetedMethod):
    """``layer`` None: the paper's K = 2 (not the family's IVC-Prune K); ``retention`` None: the family budget."""

    pivot_image: int = 4  # DART official LLaVA-1.5 config: 4 image pivots (pivot_image_token)
    pivot_text: int = 4  # DART official LLaVA-1.5 config: 4 text pivots after the image (pivot_text_token)

    name: ClassVar[str] = "dart"
    captures: ClassVar[tuple[str, ...]] = ("attention", "hidden")

    def __post_init__(self):
        super().__post_init__()
        for what in ("pivot_image", "pivot_text"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DART {what} must be an int >= 0, got {value!r}")
        if self.pivot_image + self.pivot_text == 0:
            raise ValueError("DART needs at least one pivot (pivot_image + pivot_text > 0)")

    def resolve_layer(self, adapter) -> int:
        if self.layer is None:
            return replace(self, layer=min(PAPER_LAYER, adapter.num_layers - 1)).resolve_layer(adapter)
        return super().resolve_layer(adapter)

    def attach_captures(self, runtime) -> list:
        layer = runtime.layer - 1
        return [AttentionTap(runtime, runtime.adapter.layers[layer].self_attn, runtime.adapter.attn_implementation)]

    def key_norms(self, ctx: SampleContext) -> torch.Tensor:
        """(S,) L1 norm of each position's layer K-1 key over every KV head."""
        captured = ctx.extras.get(CAPTURE_KEY)
        if captured is None:
            raise RuntimeError("DART: layer K-1 keys were not captured during the prefill")
        key = captured[1][ctx.index]  # (H_kv, S, D)
        return key.float().abs().sum(dim=(0, 2)).cpu()

    def features(self, ctx: SampleContext) -> torch.Tensor:
        """(S, H) hidden states entering layer K after the text model's final norm (float32)."""
        if ctx.hidden is None:
            raise RuntimeError("DART: the layer-K hidden states were not captured")
        norm = getattr(ctx.adapter.text_model, "norm", None)
        hidden = ctx.hidden
        with torch.no_grad():
            hidden = norm(hidden[None])[0] if norm is not None else hidden
        return hidden.float().cpu()

    def fill(self, ctx: SampleContext, image: ImageRecord, exclude: torch.Tensor, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        a = image.start
        norms = self.key_norms(ctx)
        free = torch.nonzero(~unavailable(ctx, image, exclude), as_tuple=False).flatten()
        image_pivots = free[rank(norms[a + free])[:self.pivot_image]].tolist()
        text = ctx.queries(image, 0)
        text_pivots = text[rank(norms[text])[:self.pivot_text]].tolist() if text.numel() else []
        hidden = self.features(ctx)
        pivots = [hidden[a + p] for p in image_pivots] + [hidden[t] for t in text_pivots]
        chosen = duplication_fill(hidden[a:a + image.length], pivots, image_pivots, free.tolist(), n)
        return torch.tensor(chosen, dtype=torch.long)

    def ranking(self, ctx: SampleContext, image: ImageRecord) -> torch.Tensor:
        """DART's order over every countable token (pivots, then the per-pivot picks)."""
        countable = countable_tokens(ctx, image)
        return self.fill(ctx, image, torch.empty(0, dtype=torch.long), countable.numel())
