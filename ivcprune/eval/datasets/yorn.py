"""Yes/No benchmarks (docs/HARNESS.md §6.1, §6.4): prompts, the VLMEvalKit extraction rule and the
MME, POPE and HallusionBench scores.  `Unknown` rows go to the judge when one is active.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..families import get_family
from .base import DataError, Dataset, ScoreReport, cell, judge_record, row_error

PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
MME_GROUPS = {
    "perception": ["OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position",
                   "posters", "scene"],
    "reasoning": ["code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation"],
}


def strip_punctuation(text: str) -> str:
    """VLMEvalKit's punctuation rule, including its cap of 32 deleted periods."""
    out = text
    digits_comma = _COMMA_DIGITS.search(text) is not None
    for p in PUNCT:
        if p + " " in text or " " + p in text or digits_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=32)


def extract_yorn(text: str) -> str:
    """'Yes', 'No' or 'Unknown' from a free-form answer (§6.4)."""
    words = strip_punctuation(str(text or "").lower()).split()
    yes, no = "yes" in words, "no" in words
    if yes and not no:
        return "Yes"
    if no and not yes:
        return "No"
    return "Unknown"


def yorn_text(row, family: str, dataset_name: str) -> str:
    """The Y/N prompt text per family style (§6.1)."""
    fam = get_family(family)
    kind = "POPE" if "POPE" in dataset_name else "Hallusion" if "Hallusion" in dataset_name else \
        "MME" if "MME" in dataset_name else "other"
    return cell(row, "question") + fam.yorn_suffix(kind)


def _pct(values) -> float:
    return float(np.mean(values) * 100) if len(values) else float("nan")


def mme_scores(df: pd.DataFrame) -> dict:
    """Per category acc + acc+ (0-200); perception/reasoning sums, reasoning also as cognition."""
    missing = [c for c in ("category", "image_path") if c not in df.columns]
    if missing:
        raise DataError(f"MME scoring needs the column(s) {missing}")
    stats: dict = defaultdict(lambda: defaultdict(list))
    for cat, path, score in zip(df["category"], df["image_path"], df["score"]):
        stats[cat][path].append(bool(score))
    cats = {}
    for cat, by_image in stats.items():
        acc = _pct([s for scores in by_image.values() for s in scores])
        plus = _pct([all(scores[:2]) for scores in by_image.values()])
        cats[cat] = acc + plus
    out = {k: float(sum(cats[c] for c in members if c in cats)) for k, members in MME_GROUPS.items()}
    out["cognition"] = out["reasoning"]
    out.update({c: cats[c] for c in sorted(cats)})
    return out


def _f1(true, pred) -> tuple[float, float, float]:
    tp = sum(t and p for t, p in zip(true, pred))
    fp = sum((not t) and p for t, p in zip(true, pred))
    fn = sum(t and not p for t, p in zip(true, pred))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, precision, recall


def pope_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows split on comma-separated category; Overall (F1), acc, precision, recall, all x100."""
    exploded = df.assign(category=df["category"].astype(str).str.split(",")).explode("category") \
        if "category" in df.columns else df.assign(category="")
    rows = []
    groups = [("Overall", exploded)] + [(c, exploded[exploded["category"] == c])
                                        for c in dict.fromkeys(exploded["category"]) if c != ""]
    for name, sub in groups:
        true = [a == "Yes" for a in sub["answer"]]
        pred = [e == "Yes" for e in sub["extracted"]]
        f1, p, r = _f1(true, pred)
        rows.append({"split": name, "Overall": f1 * 100, "acc": _pct(list(sub["score"])),
                     "precision": p * 100, "recall": r * 100})
    return pd.DataFrame(rows)


def hallusion_table(df: pd.DataFrame) -> pd.DataFrame:
    """aAcc (questions), fAcc (figure groups), qAcc (question groups), x100, overall and per group."""
    parts = [str(i).split("_") for i in df["index"]]
    df = df.assign(set_id=[p[3] for p in parts], figure_id=[p[4] for p in parts],
                   question_id=[p[5] for p in parts])
    l2 = df["l2-category"] if "l2-category" in df.columns else pd.Series("", index=df.index)
    df = df.assign(_l2=l2)

    def grouped(sub, key):
        res = defaultdict(list)
        for _, r in sub.iterrows():
            res[(r["_l2"], r["set_id"], r[key])].append(bool(r["score"]))
        return _pct([all(v) for v in res.values()])

    def line(name, sub):
        return {"split": name, "aAcc": _pct(list(sub["score"])), "fAcc": grouped(sub, "figure_id"),
                "qAcc": grouped(sub, "question_id")}

    rows = [line("Overall", df)]
    for col in ("category", "l2-category"):
        if col in df.columns:
            rows += [line(c, df[df[col] == c]) for c in sorted(set(df[col]))]
    return pd.DataFrame(rows)


def category_table(df: pd.DataFrame) -> pd.DataFrame:
    row = {"split": "none", "Overall": _pct(list(df["score"]))}
    if "category" in df.columns:
        row.update({c: _pct(list(df[df["category"] == c]["score"])) for c in sorted(set(df["category"]))})
    return pd.DataFrame([row])


class YesNoDataset(Dataset):
    type = "YN"

    def _text(self, row, family: str) -> str:
        return yorn_text(row, family, self.name)

    def _score(self, merged: pd.DataFrame, judge, pred_file: Path, meta: dict) -> ScoreReport:
        result = merged.copy()
        extracted = ["Unknown" if row_error(r) else extract_yorn(cell(r, "prediction")) for _, r in result.iterrows()]
        sources = ["rule" if e != "Unknown" else "unresolved" for e in extracted]
        todo = [i for i, e in enumerate(extracted) if e == "Unknown" and not row_error(result.iloc[i])]
        if todo and judge is not None and judge.active:
            replies = judge.yorn_many([(cell(result.iloc[i], "question"), cell(result.iloc[i], "prediction"))
                                       for i in todo])
            for i, ans in zip(todo, replies):
                if ans is None:
                    sources[i] = "judge_error"
                elif ans in ("Yes", "No"):
                    sources[i], extracted[i] = "judge", ans
        result["extracted"] = extracted
        result["score"] = [e == a for e, a in zip(extracted, result["answer"])]
        result["match_source"] = sources
        table, metrics = self._table(result)
        metrics["number"] = len(result)
        info = judge_record(judge, sources)
        return self._finish(metrics, result, table, pred_file, meta, info)

    def _table(self, result: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        if "MME" in self.name:
            scores = mme_scores(result)
            return pd.DataFrame([scores]), dict(scores)
        if "POPE" in self.name:
            table = pope_table(result)
        elif "Hallusion" in self.name:
            table = hallusion_table(result)
        else:
            table = category_table(result)
        overall = table.iloc[0].drop("split").to_dict()
        return table, {**{k: float(v) for k, v in overall.items()}, "table": table.to_dict(orient="records")}
