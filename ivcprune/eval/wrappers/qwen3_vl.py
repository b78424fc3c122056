"""Qwen3-VL chat wrapper (dense and MoE): the Qwen2.5-VL wrapper with Qwen3-VL's classes and image budget.

Patch 16 with a 2x2 merge makes one image token per 32 x 32 pixels. The default budget is the one the Qwen3-VL
README recommends for images, 256 to 1280 tokens per image (``shortest_edge`` 256*32*32, ``longest_edge``
1280*32*32); a registry entry's ``min_pixels`` / ``max_pixels`` override it. Answers are decoded without special
tokens (boxes are plain JSON text).
"""

from __future__ import annotations

from ivcprune.eval.wrappers.qwen import QwenVL

CLASSES = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}


class Qwen3VLWrapper(QwenVL):
    """The harness Model for the ``qwen3_vl`` and ``qwen3_vl_moe`` families."""

    factor = 32
    default_min_pixels = 256 * 32 * 32
    default_max_pixels = 1280 * 32 * 32

    def model_class_name(self) -> str:
        return CLASSES[self.family]

    def _decode(self, new) -> str:
        return self.tokenizer.decode(new, skip_special_tokens=True)


def load(entry, device: str = "cpu") -> Qwen3VLWrapper:
    return Qwen3VLWrapper(entry, device)
