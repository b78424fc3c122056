"""LLaVA-1.5: ``[x1, y1, x2, y2]`` as 0-1 fractions of the square-padded image; InternVL-style MCQ prompts."""

from __future__ import annotations

from ivcprune.eval.families.base import HarnessFamily


class Llava(HarnessFamily):
    name = "llava"
    wrapper = "ivcprune.eval.wrappers.llava:load"
    mcq_style = "internvl"
    grounding_prompt = "Please provide the bounding box coordinate of the region this sentence describes: {expr}"

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        """Undo the square padding: fractions of max(W, H), centred."""
        x1, y1, x2, y2 = box
        side = max(width, height)
        dx, dy = (side - width) // 2, (side - height) // 2
        return [x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy]


FAMILY = Llava()
