"""TSV integrity: every record in the file is a row the harness reads, or the read fails naming the line.

pandas is lenient in ways that lose rows silently: a field that starts with an unescaped ``"`` runs on to the
next ``"`` anywhere later in the file, swallowing the rows in between into one cell; a row cut short is padded
with empty cells. ``scan_lines`` walks the raw bytes once (UTF-8, field counts of quote-free lines) and
``check_rows`` compares what pandas produced with what the file holds. Both raise ``DataError`` naming the
physical line (1-based, the header is line 1) and the row's ``index``.

``row_hashes`` gives each row a content hash, stored with its prediction, so an edited row is re-run (the
per-row part of the resume fingerprint).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .tsv import DataError

_LISTED = 10
# columns that never reach the model: editing them re-scores on the next run but does not re-run the row
NOT_HASHED = ("answer",)


@dataclass
class LineScan:
    """What the raw bytes say: records per physical line, before any quoting is interpreted."""

    n_fields: int  # header fields
    n_lines: int = 0  # physical lines after the header
    n_blank: int = 0
    quoted_lines: int = 0  # lines holding a '"' (quoted fields may span lines or hold tabs)
    last_odd_quote: tuple | None = None  # (line, index) where the last quoted field spanning lines opened
    quote_error: tuple | None = None  # (line, message) of the first record whose quoting csv's strict rules reject
    short: list = field(default_factory=list)  # (line, index, fields) of quote-free lines with the wrong count


def _index_of(line: bytes) -> str:
    return line.split(b"\t", 1)[0].decode("utf-8", errors="replace").strip()[:40]


def _encoding_error(path: Path, lineno: int, line: bytes, header: list[str], exc: UnicodeDecodeError) -> DataError:
    before = line[: exc.start]
    col = before.count(b"\t")
    offset = exc.start - (before.rfind(b"\t") + 1)
    name = header[col] if col < len(header) else f"field {col + 1}"
    where = "the header" if lineno == 1 else f"line {lineno} (index {_index_of(line)})"
    return DataError(f"{path}: not UTF-8 in {where}, column '{name}': byte 0x{line[exc.start]:02x} at offset "
                     f"{offset} of the cell ({exc.reason}). Re-save the file as UTF-8.")


def _fast_scan(path: Path) -> LineScan | None:
    """The common case in large chunks: no quote and exactly as many tabs as the lines need (a blank, short or
    long line breaks the count). None when any of that fails; ``scan_lines`` then walks the lines to name them. UTF-8 is left to the
    parser here: when it fails, ``scan_lines(path, fast=False)`` finds the row."""
    n_nl = n_tab = 0
    tail = b""
    with open(path, "rb") as fh:
        head = fh.readline()
        try:
            n_fields = len(head.rstrip(b"\r\n").decode("utf-8").split("\t"))
        except UnicodeDecodeError:
            return None
        while True:
            chunk = fh.read(1 << 26)
            if not chunk:
                break
            if b'"' in chunk:
                return None
            n_nl += chunk.count(b"\n")
            n_tab += chunk.count(b"\t")
            tail = chunk[-2:]
    n_lines = n_nl + (1 if tail and not tail.endswith(b"\n") else 0)
    if n_tab != (n_fields - 1) * n_lines:  # a blank, short or long line somewhere: walk the lines
        return None
    return LineScan(n_fields=n_fields, n_lines=n_lines)


def scan_lines(path: Path, fast: bool = True) -> LineScan:
    """One pass over the file: the field count of every line without quotes (a short or long row names its line)
    and UTF-8 per line (an error names the line, the row's index and the column; with ``fast`` a file without
    quotes or irregular lines is only counted in large chunks and UTF-8 is left to the parser)."""
    path = Path(path)
    try:
        quick = _fast_scan(path) if fast else None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if quick is not None:
        return quick
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    with fh:
        head = fh.readline()
        try:
            header = head.rstrip(b"\r\n").decode("utf-8").split("\t")
        except UnicodeDecodeError as exc:
            raise _encoding_error(path, 1, head, [], exc) from exc
        scan = LineScan(n_fields=len(header))
        lineno, inside = 1, False  # inside: an odd number of '"' so far, the line continues a quoted field
        group: list = []  # the lines of the record being read that holds quotes
        for line in fh:
            lineno += 1
            scan.n_lines += 1
            body = line.rstrip(b"\r\n")
            if not body.strip():
                scan.n_blank += 1
                continue
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _encoding_error(path, lineno, body, header, exc) from exc
            quotes = body.count(b'"')
            if quotes or inside:  # a quoted field may hold tabs and newlines: pandas and check_rows judge these
                scan.quoted_lines += 1
                if not inside:
                    group = [lineno]
                group.append(body)
                if quotes % 2:
                    if not inside:
                        scan.last_odd_quote = (lineno, _index_of(body))
                    inside = not inside
                if not inside and scan.quote_error is None:
                    scan.quote_error = _strict_record(group[0], group[1:], scan.n_fields)
            elif body.count(b"\t") + 1 != scan.n_fields and len(scan.short) < _LISTED:
                scan.short.append((lineno, _index_of(body), body.count(b"\t") + 1))
    if scan.short:
        listed = ", ".join(f"line {n} (index {i}): {k} fields" for n, i, k in scan.short)
        raise DataError(f"{path}: rows with the wrong number of tab-separated fields (the header has "
                        f"{scan.n_fields}): {listed}. A row cut short or holding an unquoted tab would be "
                        f"misread, so nothing runs.")
    return scan


def _strict_record(start: int, lines: list[bytes], n_fields: int) -> tuple | None:
    """(line, message) when one record holding quotes breaks csv's strict rules, else None. A record quoted
    field by field (quote-all) is checked with bytes operations; any other through csv.reader."""
    rec = b"\n".join(lines)
    if rec.startswith(b'"') and rec.endswith(b'"'):
        pieces = rec[1:-1].replace(b'""', b"").split(b'"\t"')
        if len(pieces) == n_fields and not any(b'"' in p for p in pieces):
            return None
    reader = csv.reader(io.StringIO(rec.decode("utf-8", errors="replace")), delimiter="\t", strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error as exc:
        return start + reader.line_num - 1, str(exc)
    return None


def check_quoting(path: Path, scan: LineScan) -> None:
    """A field that opens with a quote it does not close properly (``"Best" thing``: pandas silently drops the
    quotes) fails naming the line; ``scan_lines`` checked every record holding quotes with csv's strict rules."""
    if scan.quote_error is not None:
        line, why = scan.quote_error
        raise DataError(f"{path}: line {line}: stray quote ({why}). A field that starts with '\"' must be quoted as "
                        f"a whole with its inner quotes doubled (\"\"), as csv.writer writes it; otherwise the "
                        f"cell's text would be read altered.")


def _start_lines(df: pd.DataFrame, newlines: pd.Series) -> list[int]:
    """Physical line on which each parsed row starts (header = line 1)."""
    starts, line = [], 2
    for n in newlines.tolist():
        starts.append(line)
        line += 1 + int(n)
    return starts


def check_rows(df: pd.DataFrame, path: Path, scan: LineScan) -> None:
    """Rows read must be the records in the file: a cell that swallowed later lines (an unescaped quote) fails
    naming the line where it starts; otherwise the counts must agree."""
    text_cols = [c for c in df.columns if c != "image"]  # base64 never holds a newline
    per_col = {c: df[c].str.count("\n") for c in text_cols}
    newlines = sum(per_col.values()) if per_col else pd.Series(0, index=df.index)
    expected = scan.n_lines - scan.n_blank
    if not int(newlines.sum()):
        if len(df) != expected:
            raise DataError(f"{path}: {len(df)} rows read but the file holds {expected} records; the file is "
                            f"damaged or was not written as a tab-separated table")
        return
    starts = _start_lines(df, newlines)
    merged = []
    for col, counts in per_col.items():
        for pos in counts.to_numpy().nonzero()[0]:
            value = df[col].iat[pos]
            tail = value.split("\n", 1)[1]
            if "\t" in tail:  # a later line with its own fields ended up inside this cell
                merged.append((starts[pos], df["index"].iat[pos] if "index" in df.columns else "?", col,
                               int(counts.iat[pos])))
    if merged:
        merged.sort()
        listed = "; ".join(f"line {ln} (index {ix}), column '{col}' runs over {n} more line(s)"
                           for ln, ix, col, n in merged[:_LISTED])
        raise DataError(f"{path}: {len(merged)} cell(s) swallowed the lines after them, so those rows would be "
                        f"lost: {listed}. A field starting with an unescaped '\"' is read up to the next '\"' in "
                        f"the file; quote the whole field and double its quotes (\"\"), as csv.writer does.")


def row_hashes(df: pd.DataFrame, images: dict[str, str] | None = None) -> list[str]:
    """sha256 per row over every column but ``answer`` (the model never sees it), in column-name order; an
    ``image`` reference (<= 64 characters) is replaced by the image it points to, so editing the referenced
    image re-runs the rows that use it. Image files named by ``image_path`` are hashed by path only."""
    images = images or {}
    cols = sorted(c for c in df.columns if c not in NOT_HASHED)
    columns = [df[c].astype(str).tolist() for c in cols]
    img_pos = cols.index("image") if "image" in cols else None
    out = []
    for values in zip(*columns):
        h = hashlib.sha256()
        for pos, (name, value) in enumerate(zip(cols, values)):
            if pos == img_pos and 0 < len(value) <= 64:
                value = images.get(value.strip(), value)
            data = value.encode("utf-8", "surrogatepass")
            h.update(f"{name}\x00{len(data)}\x00".encode())
            h.update(data)
        out.append(h.hexdigest()[:32])
    return out
