"""RefCOCO/+/g grounding (docs/HARNESS.md §5): per-family prompts, parsers, frame mappings and IoU scoring.

Conventions are explicit per family and never guessed from coordinate magnitudes, except when
reading a foreign predictions file that has no `raw_prediction` (the official <= 1.1 rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..families import family_names, get_family
from ..families.qwen2_5_vl import resized_frame as qwen25_frame
from ..tsv import parse_numbers
from .base import Dataset, ScoreReport, cell, row_error


class FrameError(ValueError):
    """Family and GT frame disagree (a usage error unless --force-frame)."""


def grounding_text(expr: str, family: str) -> str:
    """The text part of a grounding prompt; `expr` is the `question` cell verbatim."""
    return get_family(family).grounding_text(expr)


def parse_box(text: str, family: str) -> list[float] | None:
    """The first box in the model's own frame, or None; accepts what the official parsers accept."""
    return get_family(family).parse_box(text)


def to_gt_frame(box, family: str, width, height, box_scale: float | None = None) -> list[float]:
    """Map a parsed box into the GT frame of a W x H image (§5 table)."""
    return get_family(family).to_gt_frame(box, width, height, box_scale)


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


def frame_mismatch(input_size, width, height) -> bool:
    """True when `Model.input_size(W, H)` is not the `_for_qwen25vl` GT frame (min/max pixels moved it)."""
    return get_family("qwen2_5_vl").frame_mismatch(input_size, width, height)


def check_frame(dataset_name: str, family: str, force_frame: bool = False) -> None:
    """A family that answers in its resized frame needs its resized-frame GT split, every other the standard GT."""
    suffix = get_family(family).resized_frame_suffix
    resized_splits = [f.resized_frame_suffix for f in map(get_family, family_names()) if f.resized_frame_suffix]
    split = next((s for s in resized_splits if dataset_name.endswith(s)), "")
    if split == suffix or force_frame:
        return
    if split:
        why = f"{dataset_name} holds boxes in a resized frame ({split}), but family {family} is scored in the original frame"
        fix = dataset_name[: -len(split)] + suffix
    else:
        why = f"family {family} answers in its resized frame, but {dataset_name} holds original-frame boxes"
        fix = dataset_name + suffix
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
        fam = get_family(family)
        if fam.resized_frame_suffix and input_size is not None:
            out["ivcp_frame_mismatch"] = int(fam.frame_mismatch(input_size, row["width"], row["height"]))
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
