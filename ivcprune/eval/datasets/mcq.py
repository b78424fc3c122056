"""Multiple choice (docs/HARNESS.md §6.1-6.3): prompt styles, the rule extractor, CircularEval, score table.

An item the rules cannot resolve goes to the judge when one is active; otherwise it is counted
wrong and flagged.  It is never given a random letter.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pandas as pd

from ..families import get_family
from .base import Dataset, ScoreReport, cell, judge_record, row_error

LETTERS = string.ascii_uppercase
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SPLIT_CHARS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_CJK = re.compile("[\u4e00-\u9fff]")
MMBENCH_L2 = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}
CIRCULAR_BASE = 1_000_000


def prompt_style(family: str) -> str:
    return get_family(family).mcq_style


def options_of(row) -> dict[str, str]:
    """Options A..Z that exist: the column is present and the cell is non-empty."""
    out = {}
    for letter in LETTERS:
        text = cell(row, letter)
        if text != "":
            out[letter] = text
    return out


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def mcq_text(row, family: str) -> str:
    """The MCQ prompt text in the family's style (§6.1)."""
    style = prompt_style(family)
    question, hint, options = cell(row, "question"), cell(row, "hint"), options_of(row)
    if style == "internvl":
        text = (f"{hint}\n" if hint else "") + question
        text += "".join(f"\n{k}. {v}" for k, v in options.items())
        if options:
            return text + ("\n请直接回答选项字母。" if has_cjk(text)
                           else "\nAnswer with the option's letter from the given choices directly.")
        return text + "\nAnswer the question directly."
    text = (f"Hint: {hint}\n" if hint else "") + f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
        if style == "qwen":
            text += "请直接回答选项字母。" if has_cjk(text) else "Please select the correct answer from the options above."
        else:
            text += "Please select the correct answer from the options above. \n"
    return text.rstrip() if style == "qwen" else text


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """Rule extractor (§6.2): a letter, 'Z' (refusal / none fits), or None when unresolved."""
    text = "" if prediction is None else str(prediction)
    if any(r in text for r in REFUSALS):
        return "Z"
    tokens = set(text.translate(_SPLIT_CHARS).split())
    found = [k for k in options if k in tokens]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in tokens:
        return "Z"
    lowered = text.lower()
    by_text = [k for k, v in options.items() if str(v).lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def _ask_judge(judge, items: list) -> list:
    if not items:
        return []
    if judge is None or not judge.active:
        return [False] * len(items)   # False = no judge: stays unresolved
    return list(judge.mcq_many(items))


def score_table(df: pd.DataFrame, hit: str = "hit") -> pd.DataFrame:
    """One row per split ('none' without a split column): Overall, then l2-category, then category."""
    splits = sorted(set(df["split"])) if "split" in df.columns else ["none"]
    rows = []
    for sp in splits:
        sub = df[df["split"] == sp] if "split" in df.columns else df
        row = {"split": sp, "Overall": float(np.mean(sub[hit])) if len(sub) else float("nan")}
        for col in ("l2-category", "category"):
            if col in df.columns:
                for group in sorted(set(df[col])):
                    part = sub[sub[col] == group]
                    row[MMBENCH_L2.get(group, group)] = float(np.mean(part[hit])) if len(part) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


class MCQDataset(Dataset):
    type = "MCQ"
    circular = False

    def _text(self, row, family: str) -> str:
        return mcq_text(row, family)

    def _item(self, row) -> tuple[str, dict[str, str], str]:
        return (cell(row, "question"), options_of(row), cell(row, "prediction"))

    def _score(self, merged: pd.DataFrame, judge, pred_file: Path, meta: dict) -> ScoreReport:
        if "answer" not in merged.columns:
            raise ValueError(f"{self.name}: the TSV has no 'answer' column to score against")
        result = merged.copy()
        rule = [None if row_error(r) else extract_choice(cell(r, "prediction"), options_of(r))
                for _, r in result.iterrows()]
        if self.circular:
            extracted, sources, units = self._circular(result, rule, judge)
        else:
            extracted, sources = self._plain(result, rule, judge)
            units = None
        result["extracted"] = [e if e else "" for e in extracted]
        result["hit"] = [bool(e) and e == a for e, a in zip(extracted, result["answer"])]
        result["match_source"] = sources
        if units is None:
            table = score_table(result)
            overall = float(result["hit"].mean())
        else:
            table = score_table(units, "group_hit")
            overall = float(units["group_hit"].mean())
            result["group_hit"] = [bool(units.loc[g, "group_hit"]) for g in self._groups(result)]
        info = judge_record(judge, sources)
        metrics = {"Overall": overall, "number": len(result) if units is None else len(units),
                   "table": table.to_dict(orient="records")}
        if units is not None:
            metrics["vanilla_acc"] = float(result["hit"].mean())
        return self._finish(metrics, result, table, pred_file, meta, info, extra_tables=("acc_csv",))

    def _plain(self, result: pd.DataFrame, rule: list, judge):
        extracted, sources = list(rule), ["rule" if e is not None else "unresolved" for e in rule]
        todo = [i for i, e in enumerate(rule) if e is None and not row_error(result.iloc[i])]
        answers = _ask_judge(judge, [self._item(result.iloc[i]) for i in todo])
        for i, ans in zip(todo, answers):
            if ans is False:
                continue
            sources[i] = "judge" if ans is not None else "judge_error"
            extracted[i] = ans
        return extracted, sources

    @staticmethod
    def _groups(result: pd.DataFrame) -> list[int]:
        return [int(i) % CIRCULAR_BASE for i in result["index"]]

    def _circular(self, result: pd.DataFrame, rule: list, judge):
        """CircularEval (§6.3): a group scores 1 only if every rotated copy is answered correctly."""
        groups = self._groups(result)
        answers = list(result["answer"])
        members: dict[int, list[int]] = {}
        for pos, g in enumerate(groups):
            members.setdefault(g, []).append(pos)
        extracted, sources = list(rule), ["rule" if e is not None else "unresolved" for e in rule]
        hit, pending = {}, {}
        for g, rows in members.items():
            if any(rule[p] is not None and rule[p] != answers[p] for p in rows):
                hit[g] = False
            elif all(rule[p] is not None for p in rows):
                hit[g] = True
            else:
                pending[g] = [p for p in rows if rule[p] is None]
        while pending:
            batch = [(g, ps[0]) for g, ps in pending.items()]
            askable = [(g, p) for g, p in batch if not row_error(result.iloc[p])]
            for g, p in batch:
                if row_error(result.iloc[p]):
                    hit[g] = False
                    del pending[g]
            replies = _ask_judge(judge, [self._item(result.iloc[p]) for _, p in askable])
            for (g, p), ans in zip(askable, replies):
                if ans is False or ans is None or ans != answers[p]:
                    hit[g] = False
                    del pending[g]
                    if ans is not False:
                        sources[p] = "judge" if ans is not None else "judge_error"
                        extracted[p] = ans
                    continue
                sources[p], extracted[p] = "judge", ans
                pending[g].pop(0)
                if not pending[g]:
                    hit[g] = True
                    del pending[g]
        units = []
        for g, rows in members.items():
            main = next((p for p in rows if int(result["index"].iat[p]) == g), rows[0])
            unit = {k: result[k].iat[main] for k in ("split", "category", "l2-category") if k in result.columns}
            units.append({"group": g, **unit, "group_hit": hit[g]})
        return extracted, sources, pd.DataFrame(units).set_index("group", drop=False)


class CircularMCQDataset(MCQDataset):
    circular = True
