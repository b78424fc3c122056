"""What the harness knows about one model family, in one object (docs/HARNESS.md §1, docs/ARCHITECTURE.md §6).

A family object names its wrapper and says how the family is prompted and how its answers are read: the MCQ prompt
style, the grounding prompt, box parser and coordinate frame, the VQA suffix and the Y/N suffixes. Datasets and the
runner ask the family object; they hold no per-family tables.
"""

from __future__ import annotations

import math
import re

# earliest '[' (one extra '[' allowed), then three commas and ']' on the same line ('.' excludes \n)
LIST_BOX = re.compile(r"\[\[?(.*?),(.*?),(.*?),(.*?)\]")


def finite_floats(fields) -> list[float] | None:
    """The fields as floats, or None when one is not a finite number."""
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def first_match(pattern: re.Pattern, text: str) -> list[float] | None:
    m = pattern.search(str(text))
    return finite_floats(m.groups()) if m else None


def relative_box(box, width, height, scale: float) -> list[float]:
    """A box on a 0..scale relative grid mapped to the W x H pixel frame."""
    x1, y1, x2, y2 = box
    return [x1 * width / scale, y1 * height / scale, x2 * width / scale, y2 * height / scale]


class HarnessFamily:
    """Defaults shared by most families; a family overrides what differs.

    ``name`` is the project-wide family name (the adapters' ``family``; docs/ARCHITECTURE.md §2).
    """

    name: str = ""
    wrapper: str = ""  # "module:function" building the harness Model for a registry entry
    mcq_style: str = "internvl"  # "qwen" | "internvl" | "vlmeval" (docs/HARNESS.md §6.1)
    grounding_prompt: str = "{expr}"
    vqa_suffix: str = ""
    yorn_suffixes: dict[str, str] = {}  # dataset kind ("POPE", "Hallusion", "MME", "other") -> suffix
    resized_frame_suffix: str = ""  # grounding GT split suffix when answers are in the model's resized frame

    def grounding_text(self, expr: str) -> str:
        """The text part of a grounding prompt; ``expr`` is the `question` cell verbatim."""
        return self.grounding_prompt.format(expr=expr)

    def parse_box(self, text: str) -> list[float] | None:
        """The first box in the model's own frame, or None (what the official parsers accept)."""
        return first_match(LIST_BOX, text)

    def to_gt_frame(self, box, width, height, box_scale: float | None = None) -> list[float]:
        """Map a parsed box into the ground-truth frame of a W x H image (docs/HARNESS.md §5 table)."""
        return [float(v) for v in box]

    def frame_mismatch(self, input_size, width, height) -> bool:
        """True when the model saw the image at a size other than the one its GT split assumes."""
        return False

    def yorn_suffix(self, kind: str) -> str:
        return self.yorn_suffixes.get(kind, "")

    def __repr__(self) -> str:
        return f"<harness family {self.name}>"
