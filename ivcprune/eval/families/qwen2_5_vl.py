"""Qwen2.5-VL: JSON ``bbox_2d`` boxes in the pixels of its resized input (the `_for_qwen25vl` GT splits)."""

from __future__ import annotations

import re

from ivcprune.eval.families.base import HarnessFamily, first_match

PATCH = 28
YES_NO = " Please answer yes or no."
SHORT_ANSWER = "\nPlease try to answer the question with short words or phrases if possible."


def resized_frame(width, height, patch: int = PATCH) -> tuple[int, int]:
    """The Qwen2.5-VL input size of a W x H image without pixel limits: each side rounded to the patch."""
    return round(width / patch) * patch, round(height / patch) * patch


class Qwen25VL(HarnessFamily):
    name = "qwen2_5_vl"
    wrapper = "ivcprune.eval.wrappers.qwen:load"
    mcq_style = "qwen"
    grounding_prompt = "\nLocate {expr} and output the bbox coordinates in JSON format."
    vqa_suffix = SHORT_ANSWER
    yorn_suffixes = {"POPE": YES_NO, "Hallusion": YES_NO}
    resized_frame_suffix = "_for_qwen25vl"
    box = re.compile(r'"bbox_2d":\s*\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]')

    def parse_box(self, text: str) -> list[float] | None:
        return first_match(self.box, text)

    def frame_mismatch(self, input_size, width, height) -> bool:
        """min/max pixels moved the input away from the `_for_qwen25vl` GT frame."""
        return tuple(int(v) for v in input_size) != resized_frame(width, height)


FAMILY = Qwen25VL()
