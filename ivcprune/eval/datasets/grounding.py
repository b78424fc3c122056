"""RefCOCO/+/g grounding (docs/HARNESS.md §5): per-family prompts, parsers, frame mappings and IoU scoring.

Conventions are explicit per family and never guessed from coordinate magnitudes, except when
reading a foreign predictions file that has no `raw_prediction` (the official <= 1.1 rule).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..tsv import parse_numbers
from .base import Dataset, ScoreReport, cell, check_family, row_error

QWEN25_SUFFIX = "_for_qwen25vl"
PATCH = 28
DEFAULT_BOX_SCALE = {"deepseek_vl2": 999}

PROMPTS = {
    "qwen2_5_vl": "\nLocate {expr} and output the bbox coordinates in JSON format.",
    "qwen2_vl": "\n<|object_ref_start|>Detect {expr}<|object_ref_end|>",
    "internvl": "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expr}</ref>",
    "deepseek_vl2": "Locate <|ref|>{expr}<|/ref|> in the given image.",
    "llava": "Please provide the bounding box coordinate of the region this sentence describes: {expr}",
}

_QWEN25_RE = re.compile(r'"bbox_2d":\s*\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]')
_QWEN2_RE = re.compile(r"\((\d+),(\d+)\),\((\d+),(\d+)\)")
# earliest '[' (one extra '[' allowed), then three commas and ']' on the same line ('.' excludes \n)
_LIST_RE = re.compile(r"\[\[?(.*?),(.*?),(.*?),(.*?)\]")


class FrameError(ValueError):
    """Family and GT frame disagree (a usage error unless --force-frame)."""


def grounding_text(expr: str, family: str) -> str:
    """The text part of a grounding prompt; `expr` is the `question` cell verbatim."""
    check_family(family)
    return PROMPTS[family].format(expr=expr.lower() if family == "qwen2_vl" else expr)


def _floats(fields) -> list[float] | None:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def parse_box(text: str, family: str) -> list[float] | None:
    """The first box in the model's own frame, or None; accepts what the official parsers accept."""
    check_family(family)
    text = str(text)
    if family == "qwen2_5_vl":
        m = _QWEN25_RE.search(text)
        return [float(v) for v in m.groups()] if m else None
    if family == "qwen2_vl":
        m = _QWEN2_RE.search(text)
        return [float(v) for v in m.groups()] if m else None
    if family == "deepseek_vl2":
        text = text.rstrip()
        text = text[:-1] if text.endswith(".") else text
    m = _LIST_RE.search(text)
    return _floats(m.groups()) if m else None


def to_gt_frame(box, family: str, width, height, box_scale: float | None = None) -> list[float]:
    """Map a parsed box into the GT frame of a W x H image (§5 table)."""
    x1, y1, x2, y2 = box
    if family == "qwen2_5_vl":
        return [x1, y1, x2, y2]
    if family in ("qwen2_vl", "internvl"):
        return [x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000]
    if family == "deepseek_vl2":
        s = box_scale or DEFAULT_BOX_SCALE["deepseek_vl2"]
        return [x1 * width / s, y1 * height / s, x2 * width / s, y2 * height / s]
    if family == "llava":
        side = max(width, height)
        dx, dy = (side - width) // 2, (side - height) // 2
        return [x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy]
    raise ValueError(f"unknown family {family!r}")


def parse_and_map(text: str, family: str, width, height, box_scale: float | None = None) -> list[float] | None:
    box = parse_box(text, family)
    return None if box is None else to_gt_frame(box, family, width, height, box_scale)


def parse_stored(prediction: str, width, height) -> list[float] | None:
    """A foreign file's `prediction` ([x1, y1, x2, y2] in the GT frame); all values <= 1.1 means 0-1."""
    nums = parse_numbers(prediction)
    if len(nums) < 4:
        return None
    box = nums[:4]
    if all(v <= 1.1 for v in box):
        box = [box[0] * width, box[1] * height, box[2] * width, box[3] * height]
    return box


def format_box(box) -> str:
    """How `prediction` is stored: `[x1, y1, x2, y2]`, `[0, 0, 0, 0]` on failure."""
    if box is None:
        return "[0, 0, 0, 0]"
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in box) + "]"


def iou(pred, gt) -> float:
    """xyxy IoU in float64: no +1, no clipping, no reordering (§5)."""
    px1, py1, px2, py2 = (np.float64(v) for v in pred)
    gx1, gy1, gx2, gy2 = (np.float64(v) for v in gt)
    ov = max(min(px2, gx2) - max(px1, gx1), 0.0) * max(min(py2, gy2) - max(py1, gy1), 0.0)
    union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - ov
    return float(ov / max(union, 1e-6))


def qwen25_frame(width, height, patch: int = PATCH) -> tuple[int, int]:
    return round(width / patch) * patch, round(height / patch) * patch


def frame_mismatch(input_size, width, height, patch: int = PATCH) -> bool:
    """True when `Model.input_size(W, H)` is not the `_for_qwen25vl` GT frame (min/max pixels moved it)."""
    return tuple(int(v) for v in input_size) != qwen25_frame(width, height, patch)


def check_frame(dataset_name: str, family: str, force_frame: bool = False) -> None:
    """qwen2_5_vl needs `_for_qwen25vl` GT and every other family the standard GT."""
    qwen_split = dataset_name.endswith(QWEN25_SUFFIX)
    if (family == "qwen2_5_vl") == qwen_split or force_frame:
        return
    if qwen_split:
        why = f"{dataset_name} holds boxes in the Qwen2.5-VL resized frame, but family {family} is scored in the original frame"
        fix = dataset_name[: -len(QWEN25_SUFFIX)]
    else:
        why = f"family qwen2_5_vl answers in its resized frame, but {dataset_name} holds original-frame boxes"
        fix = dataset_name + QWEN25_SUFFIX
    raise FrameError(f"{why}; use {fix} or pass --force-frame")


class GroundingDataset(Dataset):
    type = "VG"

    def _text(self, row, family: str) -> str:
        return grounding_text(cell(row, "question"), family)

    def check_frame(self, family: str, force_frame: bool = False) -> None:
        check_frame(self.name, family, force_frame)

    def record_fields(self, row, text: str, family: str, box_scale: float | None = None,
                      input_size=None, **kw) -> dict:
        """`prediction` as the official wrappers store it, `raw_prediction`, and the frame check."""
        box = parse_and_map(text, family, row["width"], row["height"], box_scale)
        out = {"prediction": format_box(box), "raw_prediction": text}
        if family == "qwen2_5_vl" and input_size is not None:
            out["ivcp_frame_mismatch"] = int(frame_mismatch(input_size, row["width"], row["height"]))
        return out

    def _score(self, merged: pd.DataFrame, judge, pred_file: Path, meta: dict) -> ScoreReport:
        family = meta.get("family") or (cell(merged.iloc[0], "ivcp_family") or None)
        box_scale = meta.get("box_scale")
        reparse = "raw_prediction" in merged.columns and family is not None
        rows, parse_failures, infer_errors = [], 0, 0
        for _, r in merged.iterrows():
            W, H = r["width"], r["height"]
            gt = parse_numbers(r["answer"])[:4]
            err = row_error(r)
            box = None
            if err:
                infer_errors += 1
            elif reparse:
                box = parse_and_map(cell(r, "raw_prediction"), family, W, H, box_scale)
            else:
                box = parse_stored(cell(r, "prediction"), W, H)
                if box is not None and not any(box):
                    box = None  # the official failure marker [0, 0, 0, 0]
            parse_failures += (box is None and not err)
            value = iou(box, gt) if box is not None else 0.0
            rows.append({"index": r["index"], "question": r["question"], "answer": r["answer"],
                         "raw_prediction": cell(r, "raw_prediction") or cell(r, "prediction"),
                         "pred_box": format_box(box) if box is not None else "",
                         "parse_ok": box is not None, "iou": value,
                         "hit@0.5": value >= 0.5, "hit@0.75": value >= 0.75, "error": err})
        result = pd.DataFrame(rows)
        n = len(result)
        tp = int(result["hit@0.5"].sum())
        mismatches = meta.pop("frame_mismatches", None)
        if mismatches is None and "ivcp_frame_mismatch" in merged.columns:
            mismatches = sum(str(v).strip().lower() in ("1", "true") for v in merged["ivcp_frame_mismatch"])
        metrics = {"accuracy": tp / n, "TP": tp, "number": n, "acc@0.75": float(result["hit@0.75"].mean()),
                   "mean_iou": float(result["iou"].mean()), "parse_failures": int(parse_failures),
                   "infer_errors": int(infer_errors), "frame_mismatches": int(mismatches or 0)}
        table = pd.DataFrame([{k: metrics[k] for k in ("accuracy", "TP", "number", "acc@0.75", "mean_iou")}])
        meta = {**meta, "family": family}
        return self._finish(metrics, result, table, pred_file, meta)
