"""VLMEvalKit-style TSV reading and image decoding (docs/HARNESS.md §2, §13).

Load problems (missing file, broken quoting, duplicate index, ...) raise `DataError`: the whole
(model, dataset) pair fails.  Problems with one row's image raise `BadImage` only when that image is
requested, so the runner can record the row as a counted miss and carry on.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

IMAGE_MODES = ("vlmeval", "raw")
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_MAX_LISTED = 10


class DataError(Exception):
    """A dataset cannot be used at all (the pair fails, other pairs continue)."""


class BadImage(Exception):
    """One row's image cannot be produced; the row becomes a counted miss."""


def lmudata_root() -> Path:
    """`$LMUData` (which must be an existing directory when set) or `~/LMUData`."""
    value = os.environ.get("LMUData")
    if value is None:
        return Path("~/LMUData").expanduser().absolute()
    root = Path(value).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"LMUData={value!r} is not an existing directory (no fallback to ~/LMUData)")
    return root


def renaming_hint(name: str) -> str:
    """Tell grounding users how the official converter's file names map to ours."""
    base = name[: -len("_for_qwen25vl")] if name.endswith("_for_qwen25vl") else name
    m = re.fullmatch(r"(RefCOCO|RefCOCO\+|RefCOCOg)_(\w+)", base)
    if not m:
        return ""
    stem = f"finetune_{m.group(1).lower()}_{m.group(2)}.tsv"
    made = " made with --qwen25" if name.endswith("_for_qwen25vl") else ""
    return (f" Hint: the official converter names this file {stem}; rename that file{made} to {name}.tsv, "
            f"or regenerate it with `ivcp convert` (default --naming harness).")


def tsv_path(name: str, root: Path | None = None) -> Path:
    """The expected `<root>/NAME.tsv`; raises DataError naming the absolute path when missing."""
    root = lmudata_root() if root is None else Path(root).absolute()
    path = root / f"{name}.tsv"
    if not path.is_file():
        env = os.environ.get("LMUData")
        raise DataError(f"dataset {name}: {path} not found (LMUData={env!r}; nothing is downloaded)."
                        + renaming_hint(name))
    return path


@dataclass
class TSVData:
    """A loaded TSV: `rows` keeps every record in file order (rows without an image are counted misses, never
    dropped), cut to the first `limit` rows."""

    name: str
    path: Path
    root: Path
    rows: pd.DataFrame
    n_dropped: int = 0
    image_by_index: dict[str, str] = field(default_factory=dict, repr=False)


def _listing(items) -> str:
    items = list(items)
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _bad_rows(df: pd.DataFrame, mask) -> str:
    """`row N (index X)` for the first offending rows; N is 1-based after the header."""
    rows = [i for i, bad in enumerate(mask) if bad]
    return _listing(f"row {i + 1} (index {df['index'].iat[i]})" for i in rows)


def _read_frame(path: Path, scan=None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", header=0, encoding="utf-8", dtype=str,
                           keep_default_na=False, na_filter=False)
    except UnicodeDecodeError as exc:
        from .integrity import scan_lines

        scan_lines(path, fast=False)  # raises the DataError naming the line, the row's index and the column
        raise DataError(f"{path}: not UTF-8 ({exc})") from exc
    except PermissionError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file, no header row") from exc
    except (pd.errors.ParserError, ValueError, csv.Error) as exc:
        where = ""
        if scan is not None and scan.last_odd_quote is not None and "EOF inside string" in str(exc):
            line, idx = scan.last_odd_quote
            where = f" (the quote opened on line {line}, index {idx}, is never closed)"
        raise DataError(f"{path}: broken TSV quoting or layout: {exc}{where}") from exc


def parse_numbers(text: str) -> list[float]:
    """All numbers in a cell such as `1 2 3 4` or `[1.5, 2, 3, 4]`."""
    return [float(x) for x in _NUM_RE.findall(str(text))]


def _to_number(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


def convert_index(values) -> list:
    """int when every value is an int literal, otherwise str (HallusionBench)."""
    values = [str(v) for v in values]
    if values and all(_INT_RE.match(v) for v in values):
        return [int(v) for v in values]
    return values


def _validate(df: pd.DataFrame, path: Path, grounding: bool) -> None:
    for col in ("index", "question"):
        if col not in df.columns:
            raise DataError(f"{path}: missing required column '{col}' (columns: {list(df.columns)})")
    if "image" not in df.columns and "image_path" not in df.columns:
        raise DataError(f"{path}: needs an 'image' or 'image_path' column")
    dup = df["index"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{path}: duplicate index values: {_listing(dict.fromkeys(df['index'][dup]))}")
    for col in ("image", "image_path"):
        if col in df.columns:
            multi = df[col].str.match(r"\s*\[")  # anchored match: no copy of the base64 column
            if multi.any():
                raise DataError(f"{path}: multi-image rows are not supported in v1: {_bad_rows(df, multi)}")
    if grounding:
        for col in ("answer", "height", "width"):
            if col not in df.columns:
                raise DataError(f"{path}: grounding TSV lacks column '{col}'")
        bad_ans = [len(parse_numbers(a)) < 4 for a in df["answer"]]
        if any(bad_ans):
            raise DataError(f"{path}: 'answer' needs 4 numbers (x1 y1 x2 y2) in {_bad_rows(df, bad_ans)}")
        for col in ("height", "width"):
            bad = [not _is_positive_number(v) for v in df[col]]
            if any(bad):
                raise DataError(f"{path}: '{col}' must be a positive number in {_bad_rows(df, bad)}")


def _is_positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def read_tsv(name: str, *, root: Path | None = None, path: Path | None = None, grounding: bool = False,
             limit: int | None = None) -> TSVData:
    """Read and validate `<root>/NAME.tsv` (or `path`); raises DataError on any load problem."""
    root = (lmudata_root() if root is None else Path(root).absolute())
    path = tsv_path(name, root) if path is None else Path(path)
    from .integrity import check_quoting, check_rows, scan_lines  # integrity imports DataError from here

    scan = scan_lines(path)  # encoding errors and short/long rows, named by line
    df = _read_frame(path, scan)
    check_rows(df, path, scan)  # rows merged by an unescaped quote, named by the line where it opens
    check_quoting(path, scan)  # stray quotes pandas would silently drop, named by line
    if "index" in df.columns:
        df["index"] = convert_index(df["index"])
    _validate(df, path, grounding)
    image_by_index = dict(zip(map(str, df["index"]), df["image"])) if "image" in df.columns else {}
    n_dropped = 0  # a row without an image is a counted miss (BadImage at inference), never dropped
    if limit is not None:
        df = df.iloc[: max(int(limit), 0)]
    df = df.reset_index(drop=True)
    for col in ("height", "width"):
        if col in df.columns and grounding:
            df[col] = [_to_number(v) for v in df[col]]
    if len(df) == 0:
        why = f"--limit {limit}" if limit is not None and limit <= 0 else "the file holds a header only"
        raise DataError(f"dataset {name}: no rows ({path}; {why})")
    return TSVData(name=name, path=path, root=root, rows=df, n_dropped=n_dropped, image_by_index=image_by_index)


def _cell(row, col: str) -> str:
    try:
        value = row[col]
    except (KeyError, IndexError):
        return ""
    return "" if value is None else str(value)


def _open(data: bytes, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImage(f"bad image: {what} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return img


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(f"bad image: {what} is not valid base64 ({exc})") from exc


def _format_for(image_path: str) -> str:
    ext = os.path.splitext(image_path)[1].lower()
    return Image.registered_extensions().get(ext, "JPEG") if ext else "JPEG"


def reencode_vlmeval(img: Image.Image, image_path: str = "") -> Image.Image:
    """VLMEvalKit re-saves every base64 image before inference; reproduce that in memory.

    P/RGBA become RGB, the image is saved with PIL defaults in the format of the `image_path`
    extension (JPEG quality 75 when there is none) and decoded again.
    """
    if img.mode in ("P", "RGBA"):
        img = img.convert("RGB")
    fmt = _format_for(image_path)
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except Exception as exc:
        raise BadImage(f"bad image: cannot re-encode as {fmt} ({exc})") from exc
    return _open(buf.getvalue(), "re-encoded image")


def _resolve_file(image_path: str, root: Path, name: str) -> Path:
    p = Path(image_path)
    candidates = [p] if p.is_absolute() else [root / "images" / name / p, root / p]
    for c in candidates:
        if c.is_file():
            return c
    raise BadImage(f"bad image: image_path {image_path!r} not found (tried {', '.join(map(str, candidates))})")


def load_image(row, data: TSVData, image_mode: str = "vlmeval") -> Image.Image:
    """The RGB image the model sees for `row`; raises BadImage (never DataError).

    `image` cells of <= 64 characters are the index of another row whose image is reused (one
    level).  Without `image`, `image_path` is a file path, opened as is in both modes (VLMEvalKit
    passes such paths straight to the model).
    """
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    idx = _cell(row, "index")
    encoded, image_path = _cell(row, "image"), _cell(row, "image_path")
    if encoded:
        if len(encoded) <= 64:
            ref = encoded.strip()
            target = data.image_by_index.get(ref)
            if target is None:
                raise BadImage(f"bad image: row {idx} refers to missing index {ref!r}")
            if len(target) <= 64:
                raise BadImage(f"bad image: row {idx} refers to {ref!r}, itself a reference or empty")
            encoded = target
        img = _open(_b64(encoded, f"row {idx}"), f"row {idx}")
        if image_mode == "vlmeval":
            img = reencode_vlmeval(img, image_path)
    elif image_path:
        path = _resolve_file(image_path, data.root, data.name)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BadImage(f"bad image: cannot read {path} ({exc})") from exc
        img = _open(raw, str(path))
    else:
        raise BadImage(f"bad image: row {idx} has an empty image cell and no image_path (counted as a miss)")
    return img if img.mode == "RGB" else img.convert("RGB")
