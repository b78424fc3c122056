"""Shared dataset machinery: the Dataset base class, ScoreReport and result-file writing.

Each dataset type (VG, MCQ, YN, VQA) subclasses `Dataset` and implements `_text(row, family)` and
`_score(merged, judge, meta)`.  Everything else (loading, image decoding, joining predictions with the
ground truth, writing `_result` / `_score` files) lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store
from ..families import get_family
from ..tsv import BadImage, DataError, TSVData, convert_index, load_image  # noqa: F401  (re-exported)


def cell(row, col: str) -> str:
    """A row's cell as text; '' when the column is absent (rows are Series or dicts)."""
    try:
        value = row[col]
    except (KeyError, IndexError):
        return ""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def check_family(family: str) -> None:
    """A ValueError naming the known families when ``family`` is none of them."""
    get_family(family)


@dataclass
class ScoreReport:
    """What `evaluate` produced: headline metrics, the type's table and the files written."""

    dataset: str
    type: str
    metrics: dict[str, Any]
    table: pd.DataFrame | None = None
    files: dict[str, Path] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    n_rows: int = 0

    def summary(self) -> str:
        """A few printable lines: headline numbers, the type's table and the judge mode."""
        head = f"{self.dataset} ({self.type}, {self.n_rows} rows)"
        scalars = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines = [head + ": " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in scalars.items())]
        if self.table is not None and self.type != "VG":
            lines.append(self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if self.judge:
            lines.append(f"judge: mode={self.judge.get('mode')} rule={self.judge.get('n_rule')} "
                         f"judge={self.judge.get('n_judge')} unresolved={self.judge.get('n_unresolved')}")
        return "\n".join(lines)


def output_paths(pred_file: Path) -> dict[str, Path]:
    """`<stem>.csv` -> `<stem>_result.csv`, `<stem>_score.json`, `<stem>_score.csv`, `<stem>_acc.csv`."""
    pred_file = Path(pred_file)
    stem = pred_file.with_suffix("")
    return {
        "result": Path(f"{stem}_result.csv"),
        "score_json": Path(f"{stem}_score.json"),
        "score_csv": Path(f"{stem}_score.csv"),
        "acc_csv": Path(f"{stem}_acc.csv"),
    }


def write_table(df: pd.DataFrame, csv_path: Path, xlsx: bool = True) -> list[Path]:
    """CSV (authoritative) plus an .xlsx twin; the one shared writer of ``ivcprune.eval.store``."""
    csv_path = Path(csv_path)
    store.write_table(df, csv_path, xlsx=xlsx)
    xlsx_path = csv_path.with_suffix(".xlsx")
    return [csv_path] + ([xlsx_path] if xlsx and xlsx_path.is_file() else [])


def write_json(obj: dict, path: Path) -> None:
    store.atomic_write_json(Path(path), obj)


def read_predictions(pred_file: Path) -> pd.DataFrame:
    """Read a predictions file as text; the CSV twin wins over an .xlsx (CSV is authoritative)."""
    pred_file = Path(pred_file)
    csv_twin = pred_file.with_suffix(".csv")
    if pred_file.suffix.lower() in (".xlsx", ".xls") and csv_twin.is_file():
        pred_file = csv_twin
    if not pred_file.is_file():
        raise DataError(f"predictions file {pred_file} not found")
    try:
        if pred_file.suffix.lower() in (".xlsx", ".xls"):
            df = pd.read_excel(pred_file, dtype=str, keep_default_na=False, na_filter=False)
        else:
            df = pd.read_csv(pred_file, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except Exception as exc:
        raise DataError(f"cannot read predictions {pred_file}: {exc}") from exc
    if "index" not in df.columns or "prediction" not in df.columns:
        raise DataError(f"{pred_file}: needs 'index' and 'prediction' columns")
    df["index"] = convert_index(df["index"])
    return df


ERROR_COLUMNS = ("error", "ivcp_error")


def row_error(row) -> str:
    """The inference error recorded for a prediction row ('' when none)."""
    for col in ERROR_COLUMNS:
        text = cell(row, col)
        if text:
            return text
    return ""


class Dataset:
    """A loaded benchmark: `name`, `type`, `rows` (file order) plus prompt building and scoring."""

    type = "?"

    def __init__(self, data: TSVData, image_mode: str = "vlmeval"):
        self.data = data
        self.name = data.name
        self.rows = data.rows
        self.path = data.path
        self.n_dropped = data.n_dropped
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.type} rows={len(self.rows)}>"

    # -- inference side -------------------------------------------------------------------
    def image(self, row):
        """The decoded image the model sees; raises BadImage (a counted miss, not a load error)."""
        return load_image(row, self.data, self.image_mode)

    def build_prompt(self, row, family: str) -> list[tuple[str, Any]]:
        """Ordered parts: the decoded image, then the text.  Raises BadImage for a bad image."""
        check_family(family)
        return [("image", self.image(row)), ("text", self._text(row, family))]

    def check_frame(self, family: str, force_frame: bool = False) -> None:
        """Grounding overrides this; other types accept every family."""

    def record_fields(self, row, text: str, family: str, **kw) -> dict[str, Any]:
        """Columns the runner stores for one answered row (VG adds `raw_prediction`)."""
        return {"prediction": text}

    def _text(self, row, family: str) -> str:
        raise NotImplementedError

    # -- scoring side ---------------------------------------------------------------------
    def merged_predictions(self, pred_file: Path) -> pd.DataFrame:
        """Dataset rows (the GT) joined with the predictions on `index`, in dataset order."""
        preds = read_predictions(pred_file)
        known = set(self.rows["index"])
        unknown = [i for i in preds["index"] if i not in known]
        if unknown:
            raise DataError(f"{pred_file}: {len(unknown)} indices not in {self.name}: {unknown[:10]}")
        if preds["index"].duplicated().any():
            preds = preds.drop_duplicates("index", keep="last")
        have = set(preds["index"])
        missing = [i for i in self.rows["index"] if i not in have]
        if missing:
            raise DataError(f"{pred_file}: {len(missing)} rows of {self.name} have no prediction: {missing[:10]}")
        gt = self.rows.drop(columns=["image", "prediction"], errors="ignore")
        take = ["index"] + [c for c in preds.columns if c != "index" and c not in gt.columns]
        return gt.merge(preds[take], on="index", how="left", sort=False)

    def evaluate(self, pred_file, judge=None, **meta) -> ScoreReport:
        """Score `pred_file`; writes `_result`, `_score.json` and the type's tables next to it."""
        merged = self.merged_predictions(Path(pred_file))
        if len(merged) == 0:
            raise DataError(f"{self.name}: no rows")
        errors = error_list(merged)  # rows whose inference failed (bad image, OOM): misses, listed in every score file
        meta = {"errors": errors, "n_infer_errors": len(errors), **meta}
        return self._score(merged, judge, Path(pred_file), meta)

    def _score(self, merged: pd.DataFrame, judge, pred_file: Path, meta: dict) -> ScoreReport:
        raise NotImplementedError

    def _finish(self, metrics: dict, result: pd.DataFrame, table: pd.DataFrame | None, pred_file: Path,
                meta: dict, judge_info: dict | None = None, extra_tables: tuple[str, ...] = ()) -> ScoreReport:
        """Write the standard files and build the report."""
        paths = output_paths(pred_file)
        files = {"result": paths["result"]}
        write_table(result, paths["result"])
        if table is not None:
            write_table(table, paths["score_csv"], xlsx=False)
            files["score_csv"] = paths["score_csv"]
            for key in extra_tables:
                write_table(table, paths[key], xlsx=False)
                files[key] = paths[key]
        payload = dict(metrics)
        payload.update(dataset=self.name, type=self.type, rows=len(result), dropped_rows=self.n_dropped)
        if judge_info is not None:
            payload["judge"] = judge_info
        payload.update({k: v for k, v in meta.items() if v is not None})
        write_json(payload, paths["score_json"])
        files["score_json"] = paths["score_json"]
        return ScoreReport(dataset=self.name, type=self.type, metrics=metrics, table=table, files=files,
                           judge=judge_info, n_rows=len(result))


def judge_record(judge, sources) -> dict:
    """The score file's ``judge`` block: the judge's own report plus how each row was resolved."""
    if judge is None:
        info = {"mode": "exact_matching", "requested_model": None, "response_models": [],
                "reason": "no judge given", "n_judge_errors": 0}
    else:
        info = dict(judge.report())
    s = list(sources)
    info.update(n_rule=s.count("rule"), n_judge=s.count("judge"),
                n_unresolved=s.count("unresolved") + s.count("judge_error"))
    return info


def error_list(merged: pd.DataFrame, limit: int = 1000) -> list[dict]:
    """`[{index, error}]` for rows whose inference failed (bad images included)."""
    out = []
    for _, row in merged.iterrows():
        err = row_error(row)
        if err:
            out.append({"index": row["index"], "error": err})
            if len(out) >= limit:
                break
    return out
