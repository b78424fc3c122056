"""InternVL 2.5 / 3: ``[[x1, y1, x2, y2]]`` on a 0-1000 relative grid; its own MCQ and Y/N suffixes."""

from __future__ import annotations

from ivcprune.eval.families.base import HarnessFamily, relative_box

SHORT = " Answer the question using a single word or phrase."


class InternVL(HarnessFamily):
    name = "internvl"
    wrapper = "ivcprune.eval.wrappers.internvl:load"
    mcq_style = "internvl"
    grounding_prompt = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expr}</ref>"
    vqa_suffix = "\nAnswer the question using a single word or phrase."
    yorn_suffixes = {"MME": SHORT, "Hallusion": " Please answer yes or no." + SHORT}

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        return relative_box(box, width, height, 1000)


FAMILY = InternVL()
