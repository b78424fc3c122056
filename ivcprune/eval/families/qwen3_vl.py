"""Qwen3-VL (dense): JSON ``bbox_2d`` boxes on a 0-1000 relative grid, so the standard RefCOCO splits serve.

Frame: ``x_pixels = x * W / 1000`` (and y with H) on the original image, the conversion of the Qwen3-VL grounding
cookbook and of its ODinW evaluation (relative mode); 0 and 1000 are the image edges. One vendor page describes the
grid as 0-999; a registry ``box_scale: 999`` entry switches to that reading (at most 0.1 % of a side apart).
MCQ, VQA and Y/N prompts are Qwen2.5-VL's; the grounding prompt asks for JSON as Qwen2.5-VL's does.
"""

from __future__ import annotations

import re

from ivcprune.eval.families.base import relative_box
from ivcprune.eval.families.qwen2_5_vl import Qwen25VL

BOX_SCALE = 1000
_NUMBER = r"(-?\d+(?:\.\d+)?)"


class Qwen3VL(Qwen25VL):
    name = "qwen3_vl"
    wrapper = "ivcprune.eval.wrappers.qwen3_vl:load"
    resized_frame_suffix = ""  # relative answers: the standard GT splits, no _for_qwen3vl TSVs
    # the first "bbox_2d": [x1, y1, x2, y2] (integers or decimals; inside a JSON list or a ```json fence)
    box = re.compile(r'"bbox_2d"\s*:\s*\[\s*' + r"\s*,\s*".join([_NUMBER] * 4) + r"\s*\]")

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        return relative_box(box, width, height, box_scale or BOX_SCALE)

    def frame_mismatch(self, input_size, width, height) -> bool:
        return False


FAMILY = Qwen3VL()
