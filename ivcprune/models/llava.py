"""LLaVA-1.5 adapter (1-D RoPE): image spans from the config's image token id, split per image by its token count.

Settings (ALGORITHM §4.1): IVC 5 % + 5 % over each image, foreground softmax over all valid prompt positions,
seeds max(1, round(0.01 L)), queries from E + 2, and the UNION policy (top 20 % by F u seeds u IVC, no budget).

``IVCPrune(retention=...)`` for this family: None (the default) runs UNION, about 28 % of each image kept;
1.0 is the exact no-op; a value in (0, 1) runs BUDGET(rho) with the same IVC sets and seeds, filled by F to
round(rho L) per image, so LLaVA can be compared with the baselines of ALGORITHM §9 at a fixed budget.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, FamilySettings, RequestInputs, register_adapter, token_runs

LLAVA_SETTINGS = FamilySettings(
    family="llava",
    policy="union_or_budget",
    retention=None,  # None: UNION (no budget); a float in (0, 1): BUDGET(rho)
    ivc_fraction=0.05,
    seed_fraction=0.01,
    query_offset=2,
    fg_fraction=0.2,
    keys="prompt",
    default_layers=((32, 16),),  # LLaVA-1.5-7B: K = 16
)


@register_adapter("LlavaForConditionalGeneration", "LlavaModel")
class LlavaAdapter(FamilyAdapter):
    settings = LLAVA_SETTINGS

    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.image_seq_length)

    def image_spans(self, request: RequestInputs) -> list[list[ImageRecord]]:
        image_id = self.model.config.image_token_id
        per_image = self.tokens_per_image
        side = math.isqrt(per_image)
        grid = (side, side) if side * side == per_image else None
        spans = []
        for b in range(request.input_ids.shape[0]):
            is_image = (request.input_ids[b] == image_id) & request.valid[b]
            records = []
            for start, length in token_runs(is_image):
                if length % per_image:
                    raise ValueError(
                        f"sample {b}: a run of {length} image tokens is not a multiple of the {per_image} tokens "
                        "per image (config.image_seq_length); the prompt does not match the model"
                    )
                # adjacent images merge into one run: split it by the per-image token count
                records += [ImageRecord(start=s, length=per_image, grid=grid)
                            for s in range(start, start + length, per_image)]
            spans.append(records)
        return spans

    def select_union_or_budget(self, ctx, image, settings) -> None:
        """UNION when no retention was given, BUDGET(rho) otherwise (see the module docstring)."""
        from ivcprune.methods.ivcprune import span_selection  # import here: methods import the adapters

        policy = "union" if settings.retention is None else "budget"
        span_selection(ctx, image, replace(settings, policy=policy))

