"""Qwen2-VL / Qwen2.5-VL chat wrapper: parts -> chat template (image, then text) -> greedy generate -> text.

Pruning is applied around ``generate`` through the public ``ivcprune.prune`` API only (``VLWrapper``); the
per-row statistics come from the selection record, so nothing recomputes what the record says.
"""

from __future__ import annotations

from ivcprune.eval.wrappers.base import VLWrapper

QWEN25 = "qwen2_5_vl"
FACTOR = 28  # patch 14 x spatial merge 2


class QwenVL(VLWrapper):
    """The harness Model for the ``qwen2_vl`` and ``qwen2_5_vl`` families."""

    factor = FACTOR  # pixels per merged token side
    default_min_pixels = 4 * 28 * 28
    default_max_pixels = 16384 * 28 * 28

    def __init__(self, entry, device: str = "cpu"):
        self.min_pixels = int(entry.get("min_pixels") or self.default_min_pixels)
        self.max_pixels = int(entry.get("max_pixels") or self.default_max_pixels)
        super().__init__(entry, device)

    def model_class_name(self) -> str:
        return "Qwen2_5_VLForConditionalGeneration" if self.family == QWEN25 else "Qwen2VLForConditionalGeneration"

    def image_processor_overrides(self) -> dict:
        """The registry's pixel budget (min/max pixels) on the PIL processor the official results used."""
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(w', h'): the frame the vision encoder sees after the processor's resize."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        rh, rw = smart_resize(int(h), int(w), factor=self.factor, min_pixels=self.min_pixels,
                              max_pixels=self.max_pixels)
        return rw, rh

    def _decode(self, new) -> str:
        if self.family == QWEN25:
            return self.tokenizer.decode(new, skip_special_tokens=True)
        # Qwen2-VL boxes live between special tokens: keep them, drop only end-of-turn / padding ids
        stop = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        ids = [int(t) for t in new.tolist()]
        while ids and ids[-1] in stop:
            ids.pop()
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def load(entry, device: str = "cpu") -> QwenVL:
    return QwenVL(entry, device)
