"""DeepSeek-VL2: ``[[x1, y1, x2, y2]]`` on a 0-999 grid (``box_scale``), a trailing period tolerated."""

from __future__ import annotations

from ivcprune.eval.families.base import HarnessFamily, relative_box

BOX_SCALE = 999


class DeepseekVL2(HarnessFamily):
    name = "deepseek_vl2"
    wrapper = "ivcprune.eval.wrappers.deepseek_vl2:load"
    mcq_style = "vlmeval"
    grounding_prompt = "Locate <|ref|>{expr}<|/ref|> in the given image."

    def parse_box(self, text: str) -> list[float] | None:
        text = str(text).rstrip()
        return super().parse_box(text[:-1] if text.endswith(".") else text)

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        return relative_box(box, width, height, box_scale or BOX_SCALE)


FAMILY = DeepseekVL2()
