"""Open-answer VQA (docs/HARNESS.md §6.5): TextVQA (VQA score), ChartQA (relaxed accuracy), DocVQA (ANLS)
and OCRBench (substring hits).  Exact matching only; no judge is involved.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from ..families import get_family
from .base import Dataset, ScoreReport, cell, row_error
from .yorn import strip_punctuation

NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"
ARTICLES = {"a", "an", "the"}
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's I'd I'd've I'm I've isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's "
    "should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've").split()
OCR_RECOGNITION = ["Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                   "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition"]
OCR_OTHER = ["Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
             "Handwritten Mathematical Expression Recognition"]


def _contractions() -> dict[str, str]:
    """The VQA table maps apostrophe-less spellings to the contracted form (one apostrophe missing
    for the double contractions)."""
    table = {}
    for form in _CONTRACTED:
        marks = [i for i, ch in enumerate(form) if ch == "'"]
        drops = [marks] if len(marks) == 1 else [[m] for m in marks]
        for drop in drops:
            table["".join(ch for i, ch in enumerate(form) if i not in drop)] = form
    return table


CONTRACTIONS = _contractions()


def normalize_vqa(text: str) -> str:
    """TextVQA answer normalisation: whitespace, punctuation, case, numbers, articles, contractions."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    words = [NUMBERS.get(w, w) for w in strip_punctuation(text).lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def answers_of(value: str) -> list[str]:
    """`answer` is one string or a Python-style list of strings."""
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
            if isinstance(parsed, (list, tuple)):
                return [str(a) for a in parsed]
        except (ValueError, SyntaxError):
            pass
    return [text]


def vqa_score(prediction: str, answers: list[str]) -> float:
    """Mean over the answers of min(1, n/3), n = how many of the *other* answers equal the prediction."""
    pred = normalize_vqa(prediction)
    gts = [normalize_vqa(a) for a in answers]
    if not gts:
        return 0.0
    return float(np.mean([min(1.0, sum(g == pred for g in gts[:i] + gts[i + 1:]) / 3) for i in range(len(gts))]))


def _to_float(text: str) -> float | None:
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(target: str, prediction: str, tolerance: float = 0.05) -> bool:
    """ChartQA: numbers within 5% relative error (non-zero target), otherwise case-insensitive equality."""
    target, prediction = target.strip(), prediction.strip()
    t, p = _to_float(target), _to_float(prediction)
    if t and p is not None:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: list[str]) -> float:
    """DocVQA ANLS for one row: 1 - min normalised distance, 0 below 0.5."""
    def dist(gt: str) -> float:
        a, b = " ".join(gt.strip().lower().split()), " ".join(prediction.strip().lower().split())
        longest = max(len(gt), len(prediction))
        return 0.0 if longest == 0 else levenshtein(a, b) / longest
    best = 1 - min(dist(g) for g in answers) if answers else 0.0
    return best if best >= 0.5 else 0.0


def ocr_hit(prediction: str, answers: list[str], category: str) -> bool:
    """OCRBench: an answer is a substring of the prediction (math: spaces removed, case kept)."""
    if category == "Handwritten Mathematical Expression Recognition":
        norm = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
    else:
        norm = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
    pred = norm(prediction)
    return any(norm(a) in pred for a in answers)


def vqa_text(row, family: str) -> str:
    return cell(row, "question") + get_family(family).vqa_suffix


class VQADataset(Dataset):
    type = "VQA"

    def _text(self, row, family: str) -> str:
        return vqa_text(row, family)

    def _row_score(self, row) -> float:
        pred, answers = "" if row_error(row) else cell(row, "prediction"), answers_of(cell(row, "answer"))
        if "TextVQA" in self.name:
            return vqa_score(pred, answers)
        if "ChartQA" in self.name:
            return float(any(relaxed_correct(a, pred) for a in answers))
        if "DocVQA" in self.name:
            return anls(pred, answers)
        return float(ocr_hit(pred, answers, cell(row, "category")))

    def _score(self, merged: pd.DataFrame, judge, pred_file: Path, meta: dict) -> ScoreReport:
        result = merged.copy()
        result["score"] = [self._row_score(r) for _, r in result.iterrows()]
        if "OCRBench" in self.name:
            cats = result["category"] if "category" in result.columns else pd.Series("", index=result.index)
            counts = {c: int(result["score"][cats == c].sum()) for c in OCR_RECOGNITION + OCR_OTHER}
            metrics = {"Text Recognition": sum(counts[c] for c in OCR_RECOGNITION),
                       **{c: counts[c] for c in OCR_OTHER}}
            metrics["Final Score"] = metrics["Text Recognition"] + sum(counts[c] for c in OCR_OTHER)
            metrics["Final Score Norm"] = metrics["Final Score"] / 10
            metrics["categories"] = counts
            table = pd.DataFrame([{k: v for k, v in metrics.items() if k != "categories"}])
        else:
            rows = [{"split": "Overall", "Overall": float(result["score"].mean() * 100)}]
            if "split" in result.columns:
                rows += [{"split": s, "Overall": float(result[result["split"] == s]["score"].mean() * 100)}
                         for s in sorted(set(result["split"]))]
            table = pd.DataFrame(rows)
            metrics = {"Overall": rows[0]["Overall"], "table": rows}
        metrics["number"] = len(result)
        return self._finish(metrics, result, table, pred_file, meta)

