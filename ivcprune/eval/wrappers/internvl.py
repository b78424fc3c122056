"""InternVL 2.5 / 3 chat wrapper (native ``-hf`` checkpoints).

Prompt (docs/HARNESS.md §8): the checkpoint's internvl2_5 chat template with ``<image>\\n`` + text, images first.
Tiles: the registry's ``max_tiles`` (default 6) plus a thumbnail, cut by the PIL GotOcr2 processor. The
original image sizes go to ``generate`` as ``image_sizes`` so the pruning adapter can recover each image's
tiling with the processor's own canvas routine (see ``ivcprune.models.internvl``).
"""

from __future__ import annotations

from ivcprune.eval.wrappers.base import VLWrapper
from ivcprune.models.internvl import image_sizes


class InternVLWrapper(VLWrapper):
    """The harness Model for the ``internvl`` family."""

    model_class = "InternVLForConditionalGeneration"
    default_max_new_tokens = 4096

    def image_processor_overrides(self) -> dict:
        return {"crop_to_patches": True, "min_patches": 1, "max_patches": int(self.entry.get("max_tiles") or 6)}

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(w', h') of the tiled canvas (the thumbnail aside), from the processor's canvas routine."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip = self.processor.image_processor
        gw, gh = get_optimal_tiled_canvas((h, w), (ip.size["height"], ip.size["width"]), 1, ip.max_patches)
        return gw * ip.size["width"], gh * ip.size["height"]

    def build_inputs(self, parts):
        inputs = super().build_inputs(parts)
        images = [value for kind, value in parts if kind == "image"]
        if images:
            inputs["image_sizes"] = image_sizes(images)
        return inputs.to(self.device)


def load(entry, device: str = "cpu") -> InternVLWrapper:
    return InternVLWrapper(entry, device)
