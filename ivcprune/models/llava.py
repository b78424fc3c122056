"""LLaVA-1.5 adapter (1-D RoPE): image spans from the config's image token id, split per image by its token count.

Every image is one square grid of ``config.image_seq_length`` tokens (24 x 24 for LLaVA-1.5 at 336 px).
"""

from __future__ import annotations

import math

from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, RequestInputs, register_adapter, token_runs


@register_adapter("LlavaForConditionalGeneration", "LlavaModel")
class LlavaAdapter(FamilyAdapter):
    family = "llava"

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
