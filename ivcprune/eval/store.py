"""Result storage: append-only part files, atomic final files and per-pair locks (docs/HARNESS.md §9).

Part files are the only state a run keeps while it works, so a ``kill -9`` can lose at most the row in
flight; final files are always written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

XLSX_CELL_LIMIT = 32767


# --------------------------------------------------------------------------------------------- part files
@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until the current write is complete (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


class PartWriter:
    """Appends one JSON record per line with a single ``write`` on an O_APPEND descriptor, then fsyncs.

    ``append_all`` writes the records of one batch (issue 13) the same way, one line each, with one ``write`` and one
    fsync for all of them: what a crash can lose is still at most the batch in flight."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        self.append_all([record])

    def append_all(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records).encode("utf-8")
        with _sigint_deferred():
            written = os.write(self._fd, data)
            if written != len(data):  # a short write is a disk problem: leave a line the reader drops
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_part(path: Path, repair: bool = True) -> list[dict]:
    """Valid records of one part file, in order. A truncated or invalid tail is cut back to the last valid line."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good_end, pos = [], 0, 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        line = raw[pos:end]
        try:
            if nl < 0:
                raise ValueError("no newline")
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or "index" not in rec:
                raise ValueError("not a record")
        except (ValueError, UnicodeDecodeError):
            break
        records.append(rec)
        good_end = end
        pos = end
    if good_end < len(raw) and repair:
        dropped = len(raw) - good_end
        warnings.warn(f"{path}: dropped an invalid tail of {dropped} bytes (interrupted write)", stacklevel=2)
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return records


def part_files(parts_dir: Path, stem: str) -> list[Path]:
    """All part files of one (model, dataset) pair, whatever world size wrote them."""
    parts_dir = Path(parts_dir)
    if not parts_dir.is_dir():
        return []
    return sorted(p for p in parts_dir.glob(f"{_glob_escape(stem)}.r*.jsonl"))


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def latest_records(records: list[dict]) -> dict:
    """Last record per index (a retried row replaces its failed attempt)."""
    out: dict = {}
    for rec in records:
        out[_key(rec["index"])] = rec
    return out


def _key(index) -> str:
    return str(index)


# --------------------------------------------------------------------------------------------- final files
def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C, ...: no half-written temporary file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


_warned_no_openpyxl = False


def write_table(df: pd.DataFrame, csv_path: Path, xlsx: bool = True) -> None:
    """CSV (authoritative) plus .xlsx next to it when openpyxl is importable; both via rename."""
    global _warned_no_openpyxl
    csv_path = Path(csv_path)
    atomic_write_text(csv_path, df.to_csv(index=False))
    if not xlsx:
        return
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        if not _warned_no_openpyxl:
            warnings.warn("openpyxl is not installed: writing CSV files only", stacklevel=2)
            _warned_no_openpyxl = True
        return
    xlsx_path = csv_path.with_suffix(".xlsx")
    tmp = xlsx_path.with_name(f".{xlsx_path.stem}.tmp{os.getpid()}.xlsx")
    try:
        xlsx_safe(df, xlsx_path.name).to_excel(tmp, index=False, engine="openpyxl")
        os.replace(tmp, xlsx_path)
    except Exception as err:  # noqa: BLE001 - the CSV is authoritative; a broken twin is only a warning
        tmp.unlink(missing_ok=True)
        warnings.warn(f"{xlsx_path.name} not written ({type(err).__name__}: {err}); the CSV is complete",
                      stacklevel=2)


def xlsx_safe(df: pd.DataFrame, name: str = "xlsx") -> pd.DataFrame:
    """Cells Excel can hold: control characters removed, long text cut to 32,767 chars (with a warning)."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    cut = df.copy()
    truncated = 0
    for col in cut.columns:  # every column: pandas 3 stores text as a 'str' dtype, not object
        values = [ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in cut[col]]
        truncated += sum(isinstance(v, str) and len(v) > XLSX_CELL_LIMIT for v in values)
        cut[col] = [v[:XLSX_CELL_LIMIT] if isinstance(v, str) else v for v in values]
    if truncated:
        warnings.warn(f"{name}: {truncated} cell(s) over {XLSX_CELL_LIMIT} chars truncated (xlsx only)", stacklevel=3)
    return cut


def read_table(csv_path: Path) -> pd.DataFrame:
    return pd.read_csv(csv_path, dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------------------------- locks
def _zombie(pid: int) -> bool:
    """A killed process nobody reaped yet (common in containers without an init) still answers kill(pid, 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class LockHeld(RuntimeError):
    """Another live launch is writing the same (model, dataset) pair."""


@dataclass
class PairLock:
    """``<model>_<dataset>.lock`` holding ``pid host``; a dead pid on this host is taken over."""

    path: Path
    held: bool = False

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or self._alive(*owner):
                    who = "unknown" if owner is None else f"pid {owner[0]} on {owner[1]}"
                    raise LockHeld(f"{self.path} is held by {who}; another run is writing this pair "
                                   f"(delete the lock file if that run is gone)") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: the holder died on this host
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return
        raise LockHeld(f"could not take {self.path}")

    def _owner(self):
        try:
            text = self.path.read_text().split()
            return int(text[0]), text[1]
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _alive(pid: int, host: str) -> bool:
        if host != socket.gethostname():
            return True  # cannot tell on another host: assume alive
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _zombie(pid)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
