"""Qwen2-VL: ``(x1,y1),(x2,y2)`` on a 0-1000 relative grid, expression lower-cased in its detection prompt.

Prompts for MCQ, VQA and Y/N are Qwen2.5-VL's; only grounding differs.
"""

from __future__ import annotations

import re

from ivcprune.eval.families.base import relative_box
from ivcprune.eval.families.qwen2_5_vl import Qwen25VL


class Qwen2VL(Qwen25VL):
    name = "qwen2_vl"
    grounding_prompt = "\n<|object_ref_start|>Detect {expr}<|object_ref_end|>"
    resized_frame_suffix = ""  # answers are relative: the standard GT splits serve
    box = re.compile(r"\((\d+),(\d+)\),\((\d+),(\d+)\)")

    def grounding_text(self, expr: str) -> str:
        return self.grounding_prompt.format(expr=expr.lower())

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        return relative_box(box, width, height, 1000)

    def frame_mismatch(self, input_size, width, height) -> bool:
        return False


FAMILY = Qwen2VL()
