"""Qwen2-VL: ``(x1,y1),(x2,y2)`` on a 0-1000 relative grid, expression lower-cased in its detection prompt."""

from __future__ import annotations

import re

from ivcprune.eval.families.base import HarnessFamily, first_match, relative_box
from ivcprune.eval.families.qwen2_5_vl import SHORT_ANSWER, YES_NO


class Qwen2VL(HarnessFamily):
    name = "qwen2_vl"
    wrapper = "ivcprune.eval.wrappers.qwen:load"
    mcq_style = "qwen"
    grounding_prompt = "\n<|object_ref_start|>Detect {expr}<|object_ref_end|>"
    vqa_suffix = SHORT_ANSWER
    yorn_suffixes = {"POPE": YES_NO, "Hallusion": YES_NO}
    box = re.compile(r"\((\d+),(\d+)\),\((\d+),(\d+)\)")

    def grounding_text(self, expr: str) -> str:
        return self.grounding_prompt.format(expr=expr.lower())

    def parse_box(self, text: str) -> list[float] | None:
        return first_match(self.box, text)

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        return relative_box(box, width, height, 1000)


FAMILY = Qwen2VL()
