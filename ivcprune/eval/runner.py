"""``ivcp run``: sharded, resumable inference and evaluation over models x datasets (docs/HARNESS.md §9, §13).

Every finished row is appended to a per-rank part file before the next one starts, so a run can be killed at
any point and resumed under any world size; rank 0 merges the parts into the VLMEvalKit-style files.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ivcprune.eval import dist as distmod
from ivcprune.eval import batching, efficiency, health, preflight, store
from ivcprune.eval.registry import Entry, RegistryError, fingerprint, load_registry, parse_set, resolve

HARNESS_MAJOR = 1


class PairFailed(RuntimeError):
    """One (model, dataset) pair cannot finish; the message says why and the next pair runs."""


class Usage(RuntimeError):
    """A usage error (exit code 2)."""


# --------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ivcp run", description="Evaluate models on datasets (VLMEvalKit-compatible; "
                                 "resumable; torchrun-aware).")
    ap.add_argument("--data", nargs="+", required=True, metavar="NAME", help="dataset names (ivcp list datasets)")
    ap.add_argument("--model", nargs="+", required=True, metavar="NAME", help="model names (ivcp list models)")
    ap.add_argument("--work-dir", default="./outputs", help="output root (default ./outputs)")
    ap.add_argument("--mode", choices=["all", "infer", "eval"], default="all")
    ap.add_argument("--judge", default=None, help="judge model (default gpt-4o; exact_matching disables it)")
    ap.add_argument("--judge-args", default=None, help="judge options as JSON")
    ap.add_argument("--api-nproc", "--nproc", dest="api_nproc", type=int, default=8, help="judge concurrency")
    ap.add_argument("--limit", type=int, default=None, help="first N rows only (outputs named <dataset>_limitN)")
    ap.add_argument("--retention", type=float, default=None,
                    help="IVCP retention override (adds _r{F} to the name); a comma list runs a sweep")
    ap.add_argument("--method", default=None,
                    help="comma list of registered methods (ivcp list methods): runs a sweep (ivcp run / ivcp sweep)")
    ap.add_argument("--layer", type=int, default=None, help="IVCP pruning layer K override (adds _k{K})")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="any other registry override (repeatable; part of the fingerprint)")
    ap.add_argument("--model-path", default=None, help="local checkpoint folder (only with a single --model)")
    ap.add_argument("--model-config", action="append", default=[], metavar="FILE", help="extra registry YAML")
    ap.add_argument("--device-map", choices=["auto"], default=None, help="shard one model over all visible GPUs")
    ap.add_argument("--force-frame", action="store_true", help="allow a grounding split with another GT frame")
    ap.add_argument("--reuse", action="store_true", help="accept existing rows whose fingerprint differs")
    ap.add_argument("--max-failed-rows", type=float, default=health.DEFAULT_MAX_FAILED, metavar="F",
                    help="fail a pair when more than this fraction of its rows failed (default 0.05; a pair whose "
                         "rows all failed always fails)")
    ap.add_argument("--image-mode", choices=["vlmeval", "raw"], default="vlmeval")
    ap.add_argument("--dist-timeout", type=float, default=10800.0, help="barrier timeout in seconds")
    ap.add_argument("--warmup", type=int, default=2, help="rows per process left out of the timing averages")
    ap.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help="rows per generate call, left-padded (default: the registry's generation.batch_size, else 1)")
    ap.add_argument("--verbose", action="store_true", help="print every prompt and response")
    return ap


# --------------------------------------------------------------------------------------------- datasets
def check_dataset_name(name: str) -> None:
    """Usage error (exit 2) listing the nearest registered names."""
    from ivcprune.eval.datasets import UnknownDataset, check_name

    try:
        check_name(name)
    except UnknownDataset as err:
        raise Usage(f"{err}. Run 'ivcp list datasets' for all names.") from None


def open_dataset(name: str, limit: int | None, image_mode: str):
    """The dataset object of the datasets module (rows, build_prompt, record_fields, evaluate)."""
    from ivcprune.eval.datasets import load_dataset

    return load_dataset(name, limit=limit, image_mode=image_mode)


DATASET_SIG = "row-hashes"  # the dataset part of the fingerprint lives in each record's row hash ("rh")


def row_hashes(ds) -> dict[str, str]:
    """index -> content hash of the row (computed once per dataset object); a record whose hash differs from its
    row's is re-run, so an edited row is never answered from an old prediction."""
    cached = getattr(ds, "_ivcp_row_hashes", None)
    if cached is None:
        from ivcprune.eval.integrity import row_hashes as hashes

        images = getattr(getattr(ds, "data", None), "image_by_index", None)
        cached = dict(zip(map(str, ds.rows["index"].tolist()), hashes(ds.rows, images)))
        ds._ivcp_row_hashes = cached
    return cached


# --------------------------------------------------------------------------------------------- pair state
@dataclass
class Pair:
    entry: Entry
    dataset: str
    work_dir: Path
    limit: int | None

    @property
    def out_dir(self) -> Path:
        return self.work_dir / self.entry.name

    @property
    def stem(self) -> str:
        suffix = f"_limit{self.limit}" if self.limit is not None else ""
        return f"{self.entry.name}_{self.dataset}{suffix}"

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.stem}{suffix}"

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / ".parts"

    def part(self, rank: int) -> Path:
        return self.parts_dir / f"{self.stem}.r{rank}.jsonl"


@dataclass
class ModelSlot:
    """Lazily loaded model, reused across datasets; a load failure is remembered so it is not retried."""

    entry: Entry
    device: str
    model: object = None
    error: str | None = None
    reason: str | None = None  # one line for the console; the traceback goes to the pair's _error.log
    loads: int = 0
    extra: dict = field(default_factory=dict)

    def get(self):
        if self.model is None and self.error is None:
            from ivcprune.eval.wrappers import load_model

            try:
                self.loads += 1
                preflight.check_checkpoint(self.entry)
                self.model = load_model(self.entry, device=self.device)
                preflight.check_model(self.model, self.entry)  # before the first row
            except preflight.PreflightError as err:
                self.model, self.error, self.reason = None, traceback.format_exc(), str(err)
            except Exception as err:  # noqa: BLE001 - any load problem fails this model's pairs only
                self.error = traceback.format_exc()
                first = (str(err).strip().splitlines() or [""])[0][:400]
                self.reason = f"failed to load: {type(err).__name__}: {first}"
        if self.error is not None:
            raise ModelLoadError(self.reason or self.error)
        return self.model


class ModelLoadError(RuntimeError):
    pass


def final_records(pair: Pair, vg: bool) -> list[dict]:
    """Records reconstructed from an existing predictions CSV (so a merged pair can still be resumed)."""
    csv = pair.path(".csv")
    if not csv.exists():
        return []
    df = store.read_table(csv)
    out = []
    for _, row in df.iterrows():
        raw = row.get("raw_prediction", "") if vg else row.get("prediction", "")
        try:
            stats = json.loads(row.get("ivcp_stats") or "{}")
        except ValueError:
            stats = {}
        out.append({"index": row["index"], "prediction": raw, "error": row.get("ivcp_error") or None,
                    "stats": stats, "fp": row.get("ivcp_fp") or None, "rh": row.get("ivcp_rh") or None,
                    "_file": str(csv)})
    return out


def existing_records(pair: Pair, vg: bool) -> list[dict]:
    """Final-file records first, then every part file, so the newest attempt of a row wins."""
    records = final_records(pair, vg)
    for part in store.part_files(pair.parts_dir, pair.stem):
        for rec in store.read_part(part):
            rec["_file"] = str(part)
            records.append(rec)
    return records


def stale_row(rec: dict, row_hash: str | None) -> bool:
    """The record answers an older version of its row (its TSV cells changed since)."""
    return bool(rec.get("rh")) and row_hash is not None and rec["rh"] != row_hash


def plan(pair: Pair, ds, fp: str, reuse: bool) -> tuple[list, list[str]]:
    """(pending indices in file order, files holding finished rows of another fingerprint).

    Rows recorded with an error are retried whatever settings produced them, so they never block a corrected
    rerun; rows whose TSV content changed are re-run (``ds._ivcp_changed`` lists them)."""
    vg = getattr(ds, "type", None) == "VG"
    records = existing_records(pair, vg)
    latest = store.latest_records(records)
    foreign = sorted({r["_file"] for r in latest.values() if r.get("fp") and r["fp"] != fp and not r.get("error")})
    hashes = row_hashes(ds)
    pending, changed = [], []
    for idx in ds.rows["index"].tolist():
        rec = latest.get(str(idx))
        stale = rec is not None and stale_row(rec, hashes.get(str(idx)))
        if stale:
            changed.append(idx)
        if rec is None or rec.get("error") or (rec.get("fp") != fp and not reuse) or stale:
            pending.append(idx)
    ds._ivcp_changed = changed
    return pending, foreign


# --------------------------------------------------------------------------------------------- inference
def infer_rows(pair: Pair, ds, rows: list, slot: ModelSlot, ctx, fp: str, session: str, args) -> int:
    """Run ``generate`` on this rank's rows in batches; returns the number of rows recorded with an error.

    Rows are written one by one as their batch finishes (``ivcprune.eval.batching``: size-sorted windows, one
    left-padded ``generate`` per batch, per-row misses, a failed batch retried row by row once)."""
    from tqdm import tqdm

    by_index = {str(i): k for k, i in enumerate(ds.rows["index"].tolist())}
    n_err = 0
    timed = 0
    size = batching.batch_size_of(getattr(args, "batch_size", None), pair.entry)
    desc = f"{pair.entry.name} | {pair.stem[len(pair.entry.name) + 1:]}" + (f" | rank {ctx.rank}" if ctx.enabled else "")
    with store.PartWriter(pair.part(ctx.rank)) as writer, \
            tqdm(total=len(rows), desc=desc, unit="row", position=ctx.rank if ctx.enabled else None,
                 file=sys.stderr, dynamic_ncols=True, leave=True) as bar:
        for window in batching.windows(rows, size):
            ready = []  # (idx, row, record, parts) of rows whose prompt was built
            for idx in window:
                row = ds.rows.iloc[by_index[str(idx)]]
                record = {"index": _jsonable(idx), "prediction": "", "error": None, "stats": {}, "fp": fp,
                          "rh": row_hashes(ds).get(str(idx))}
                try:
                    ready.append((idx, row, record, ds.build_prompt(row, pair.entry.family)))
                except Exception as err:  # noqa: BLE001 - BadImage and friends: a counted miss, model not called
                    record["error"] = _bad_image_message(err)
                    n_err += 1
                    writer.append(record)
                    bar.update(1)
            if not ready:
                continue
            model = slot.get()
            for batch in batching.group(ready, size, key=lambda item: batching.size_key(model, item[3])):
                if args.verbose:
                    for idx, _, _, parts in batch:
                        print(f"[{pair.stem} {idx}] prompt: {_show_parts(parts)}", file=sys.stderr)
                warmup = timed < args.warmup
                outputs = batching.run_batch(model, [item[3] for item in batch], ds)
                finished = []
                for (idx, row, record, _), out in zip(batch, outputs):
                    if out.error is None:
                        record["prediction"] = "" if out.text is None else str(out.text)
                        record["stats"] = _row_stats(out.stats, model, ctx, session, warmup=warmup)
                        frame = _input_size(model, row)
                        if frame is not None:
                            record["stats"]["input_size"] = frame
                        timed += 1
                    else:  # e.g. CUDA OOM even alone: recorded, retried next run
                        record["error"] = f"{type(out.error).__name__}: {out.error}"
                        n_err += 1
                    if args.verbose:
                        print(f"[{pair.stem} {idx}] response: {record['prediction']!r}"
                              + (f" error: {record['error']}" if record["error"] else ""), file=sys.stderr)
                    finished.append(record)
                writer.append_all(finished)  # one line per row, one fsync per batch
                bar.update(len(finished))
    return n_err


def _input_size(model, row):
    """The frame the vision encoder saw, for the §5 frame check of Qwen grounding rows."""
    fn = getattr(model, "input_size", None)
    try:
        w, h = int(float(row["width"])), int(float(row["height"]))
    except (KeyError, TypeError, ValueError):
        return None
    return list(fn(w, h)) if callable(fn) else None


def _bad_image_message(err: Exception) -> str:
    text = str(err)
    if type(err).__name__ == "BadImage":
        return text if text.startswith("bad image") else f"bad image: {text}"
    return f"prompt error: {type(err).__name__}: {text}"


def _row_stats(row_stats: dict, model, ctx, session: str, warmup: bool) -> dict:
    stats = dict(row_stats or {})
    meta = getattr(model, "meta", None) or {}
    stats.update({k: v for k, v in meta.items() if k not in stats})
    stats.update({"session": session, "warmup": bool(warmup), "world_size": ctx.world_size})
    return {k: _jsonable(v) for k, v in stats.items()}


def _jsonable(v):
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _show_parts(parts) -> str:
    return " + ".join(f"<image {getattr(p, 'size', '?')}>" if kind == "image" else repr(p) for kind, p in parts)


# --------------------------------------------------------------------------------------------- merge + eval
def merge(pair: Pair, ds, fp: str, reuse: bool) -> tuple[pd.DataFrame, list[dict]]:
    """Rank 0: last record per index, completeness check, atomic predictions file, then delete the parts."""
    vg = getattr(ds, "type", None) == "VG"
    records = existing_records(pair, vg)
    latest = store.latest_records(records)
    indices = ds.rows["index"].tolist()
    ordered = [latest.get(str(i)) for i in indices]
    hashes = row_hashes(ds)
    missing = [i for i, r in zip(indices, ordered) if r is None or (r.get("fp") != fp and not reuse)
               or stale_row(r, hashes.get(str(i)))]
    if missing:
        raise PairFailed(f"{len(missing)} of {len(indices)} rows have no record (first: {missing[:10]}); nothing "
                         f"final was written. Rerun the same command to finish them.")
    df = ds.rows.drop(columns=[c for c in ("image",) if c in ds.rows.columns]).copy()
    fields = [_record_fields(ds, row, rec, pair.entry) for (_, row), rec in zip(ds.rows.iterrows(), ordered)]
    for col in dict.fromkeys(k for f in fields for k in f):
        df[col] = [f.get(col, "") for f in fields]
    df["ivcp_family"] = pair.entry.family
    df["ivcp_error"] = [r.get("error") or "" for r in ordered]
    for key in ("image_tokens", "kept_tokens", "prefill_ms", "decode_ms", "new_tokens"):
        df[f"ivcp_{key}"] = [(r.get("stats") or {}).get(key, "") for r in ordered]
    df["ivcp_fp"] = [r.get("fp") or "" for r in ordered]
    df["ivcp_rh"] = [r.get("rh") or "" for r in ordered]
    df["ivcp_stats"] = [json.dumps(r.get("stats") or {}, sort_keys=True) for r in ordered]
    pair.out_dir.mkdir(parents=True, exist_ok=True)
    store.write_table(df, pair.path(".csv"))
    for part in store.part_files(pair.parts_dir, pair.stem):
        part.unlink(missing_ok=True)
    try:
        pair.parts_dir.rmdir()
    except OSError:
        pass
    return df, ordered


def _record_fields(ds, row, rec: dict, entry: Entry) -> dict:
    """The dataset's columns for one record (VG: GT-frame box, raw text, frame check); errors store ''."""
    text = "" if rec.get("error") else (rec.get("prediction") or "")
    stats = rec.get("stats") or {}
    try:
        return ds.record_fields(row, text, entry.family, box_scale=entry.get("box_scale"),
                                input_size=stats.get("input_size"))
    except Exception:  # noqa: BLE001 - a parse failure is a miss, never a crash
        return {"prediction": text}


def evaluate(pair: Pair, ds, args, eff: dict | None = None) -> object:
    judge = None
    if ds.type in ("MCQ", "YN"):
        from ivcprune.eval.judge import make_judge

        judge = make_judge(args.judge, args.judge_args, pair.path("_judge_cache.jsonl"), args.api_nproc,
                           pair.dataset)
    report = ds.evaluate(pair.path(".csv"), judge, family=pair.entry.family, box_scale=pair.entry.get("box_scale"),
                         model=pair.entry.name, efficiency=eff)
    line = judge.summary_line() if judge is not None else None
    if line:
        print(line, file=sys.stderr)
    if judge is not None and judge.failed_every_item():
        _print_report(pair, report)
        raise PairFailed(f"judging was requested but failed for every item sent ({judge.n_items}); the scores in "
                         f"{pair.path('_score.json')} use exact matching only. {line}")
    return report


def write_efficiency(pair: Pair, records: list[dict]) -> dict:
    eff = efficiency.summarize(records, pruned=bool(pair.entry.pruning))
    eff.update({"model": pair.entry.name, "dataset": pair.dataset, "limit": pair.limit})
    store.atomic_write_json(pair.path("_efficiency.json"), eff)
    return eff


def _print_report(pair: Pair, report) -> None:
    text = None
    for attr in ("table_text", "format", "summary"):
        fn = getattr(report, attr, None)
        if callable(fn):
            text = fn()
            break
    if text is None:
        text = str(report)
    print(f"== {pair.entry.name} on {pair.dataset}" + (f" (limit {pair.limit})" if pair.limit is not None else ""))
    print(text)


# --------------------------------------------------------------------------------------------- one pair
def _family_style(family: str) -> str:
    """The MCQ prompt style of a known family (its name for a custom family), part of the fingerprint."""
    from ivcprune.eval.families import family_names, get_family

    return get_family(family).mcq_style if family in family_names() else family


def run_pair(pair: Pair, slot: ModelSlot, ctx, args, session: str) -> bool:
    """All ranks call this in step; returns True when the pair succeeded (rank 0's verdict on every rank)."""
    error, ds, fp, todo, lock = None, None, None, [], None
    try:
        ds = open_dataset(pair.dataset, args.limit, args.image_mode)
        ds.check_frame(pair.entry.family, args.force_frame)
        preflight.check_dataset(ds, args.mode)  # columns and answer formats, before any row
        style = pair.entry.get("prompt_style") or _family_style(pair.entry.family)
        fp = fingerprint(batching.fingerprint_entry(pair.entry), prompt_style=style, image_mode=args.image_mode,
                         dataset_sig=DATASET_SIG, major=HARNESS_MAJOR)
    except Exception as err:  # noqa: BLE001 - DataError, frame guard, ...: this pair fails
        error = _err_text(err)
    verdict = {"error": error, "pending": []}
    if ctx.is_main and error is None:
        try:
            pair.out_dir.mkdir(parents=True, exist_ok=True)
            if args.mode != "eval":
                lock = store.PairLock(pair.path(".lock"))
                lock.acquire()
            pending, foreign = plan(pair, ds, fp, args.reuse)
            changed = ds._ivcp_changed
            if changed and args.mode == "eval":
                raise PairFailed(f"--mode eval: {len(changed)} row(s) of the TSV changed since their predictions were "
                                 f"made (first: {changed[:10]}); run with --mode all or infer to re-run them")
            if changed:
                print(f"{pair.stem}: {len(changed)} row(s) changed in the TSV since their predictions were made "
                      f"(first: {changed[:10]}); re-running them", file=sys.stderr)
            if foreign and not args.reuse:
                raise PairFailed("existing rows were produced with other settings (fingerprint mismatch) in: "
                                 + ", ".join(foreign) + ". Use a different --work-dir, delete them, or pass --reuse "
                                 "to accept them.")
            if args.mode == "eval":  # recorded errors are scored as misses; only absent rows block scoring
                have = store.latest_records(existing_records(pair, ds.type == "VG"))
                absent = [i for i in pending if str(i) not in have]
                if absent:
                    raise PairFailed(f"--mode eval: {len(absent)} rows have no prediction yet in "
                                     f"{pair.path('.csv')}; run with --mode all or infer first")
                pending = []
            verdict["pending"] = pending
        except (store.LockHeld, PairFailed, OSError) as err:
            verdict["error"] = _err_text(err)
    verdict = ctx.broadcast(verdict)
    try:
        if verdict["error"]:
            raise PairFailed(verdict["error"])
        ctx.barrier("pending computed")
        pending = verdict["pending"]
        todo = pending[ctx.rank::ctx.world_size]
        rank_error = None
        if todo and args.mode != "eval":
            try:
                infer_rows(pair, ds, todo, slot, ctx, fp, session, args)
            except ModelLoadError as err:
                rank_error = f"model {pair.entry.name}: {err} (traceback in {pair.path('_error.log')})"
                _write_error_log(pair, f"{rank_error}\n{slot.error}")
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. disk full: the pair aborts, written rows stay valid
                rank_error = _err_text(err)
        ctx.barrier("inference done")
        errors = [e for e in ctx.gather(rank_error) if e]
        result = None
        if ctx.is_main:
            try:
                if errors:
                    raise PairFailed(errors[0] if errors[0].startswith(f"model {pair.entry.name}: ") else
                                     errors[0].splitlines()[0])
                if pending or not pair.path(".csv").exists() or store.part_files(pair.parts_dir, pair.stem):
                    _, records = merge(pair, ds, fp, args.reuse)
                else:
                    records = [store.latest_records(existing_records(pair, ds.type == "VG"))[str(i)]
                               for i in ds.rows["index"].tolist()]
                bad = health.verdict(records, args.max_failed_rows)
                if bad:
                    from ivcprune.eval.datasets.base import output_paths

                    stale = [p for p in output_paths(pair.path(".csv")).values()] + [pair.path("_result.xlsx")]
                    removed = health.remove_stale_scores(stale)
                    raise PairFailed(bad + (f"\nRemoved the earlier score files {[p.name for p in removed]}, which "
                                            f"described other predictions." if removed else ""))
                eff = write_efficiency(pair, records)
                if args.mode != "infer":
                    _print_report(pair, evaluate(pair, ds, args, eff))
                print(efficiency.format_summary(pair.entry.name, pair.dataset, eff))
                misses = sum(1 for r in records if r.get("error"))
                if misses:
                    print(f"{pair.stem}: {misses} row(s) recorded with an error (counted as misses; a rerun retries "
                          f"them)", file=sys.stderr)
            except Exception as err:  # noqa: BLE001
                result = _err_text(err)
                if not isinstance(err, PairFailed):
                    _write_error_log(pair, traceback.format_exc())
        result = ctx.broadcast(result)
        ctx.barrier("pair finished")
        if result:
            raise PairFailed(result)
        return True
    except PairFailed as err:
        if ctx.is_main:
            print(f"ivcp run: {pair.entry.name} x {pair.dataset}: FAILED: {err}", file=sys.stderr)
        return False
    finally:
        if lock is not None:
            lock.release()


def _err_text(err: Exception) -> str:
    return str(err) if isinstance(err, (PairFailed, RegistryError)) else f"{type(err).__name__}: {err}"


def _write_error_log(pair: Pair, text: str) -> None:
    try:
        pair.out_dir.mkdir(parents=True, exist_ok=True)
        with open(pair.path("_error.log"), "a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid {os.getpid()}\n{text}\n")
    except OSError:
        pass


# --------------------------------------------------------------------------------------------- entry point
def resolve_all(args) -> list[Entry]:
    if args.model_path and len(args.model) != 1:
        raise Usage("--model-path needs exactly one --model")
    reg = load_registry(args.model_config)
    sets = parse_set(args.sets)
    entries = [resolve(m, model_path=args.model_path, retention=args.retention, layer=args.layer, sets=sets,
                       registry=reg) for m in args.model]
    for d in args.data:
        check_dataset_name(d)
    if args.limit is not None and args.limit <= 0:
        raise Usage(f"--limit {args.limit}: no rows")
    for entry in entries:
        try:
            preflight.check_entry(entry)
        except preflight.PreflightError as err:
            raise Usage(str(err)) from None
    if args.batch_size is not None and args.batch_size < 1:
        raise Usage(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.max_failed_rows <= 1.0:
        raise Usage(f"--max-failed-rows must be a fraction in [0, 1], got {args.max_failed_rows}")
    if args.api_nproc < 1:
        raise Usage(f"--api-nproc must be >= 1, got {args.api_nproc}")
    if args.judge is not None and not args.judge.strip():
        raise Usage("--judge needs a model name (or exact_matching)")
    from ivcprune.eval.judge import parse_judge_args

    try:
        parse_judge_args(args.judge_args)  # before any inference: a typo must not cost a whole run
    except ValueError as err:
        raise Usage(str(err)) from None
    return entries


def check_work_dir(work: Path) -> None:
    """Create --work-dir and prove it is writable; raises Usage with the reason (never a traceback)."""
    if work.exists() and not work.is_dir():
        raise Usage(f"--work-dir {work} is a file, not a folder")
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / f".ivcp-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise Usage(f"--work-dir {work} cannot be used: {err.strerror or err}"
                    + (f" ({err.filename})" if err.filename and str(err.filename) != str(work) else "")) from None


def cli_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    ctx = None
    try:
        try:
            entries = resolve_all(args)
            if args.device_map and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise Usage("--device-map auto needs WORLD_SIZE 1 (one process holding all GPUs)")
        except (RegistryError, Usage) as err:
            print(f"ivcp run: {err}", file=sys.stderr)
            return 2
        ctx = distmod.init(args.dist_timeout)
        work = Path(args.work_dir)
        if args.mode == "eval":  # scoring needs no model: rank 0 alone, without barriers
            if not ctx.is_main:
                return 0
            ctx.close()
            ctx = distmod.DistContext(rank=0, world_size=1)
        try:
            check_work_dir(work)
        except Usage as err:
            print(f"ivcp run: {err}", file=sys.stderr)
            return 2
        distmod.check_shared_storage(ctx, work, distmod.run_id())
        session = ctx.broadcast(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        device = "auto" if args.device_map else ctx.device()
        failed = 0
        for entry in entries:
            if ctx.is_main:
                print(f"ivcp run: {entry.describe()}", file=sys.stderr)
            slot = ModelSlot(entry, device)
            for name in args.data:
                pair = Pair(entry, name, work, args.limit)
                if not run_pair(pair, slot, ctx, args, session):
                    failed += 1
            slot.model = None
        if ctx.is_main and failed:
            print(f"ivcp run: {failed} pair(s) failed", file=sys.stderr)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\nivcp run: interrupted; finished rows are on disk, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except distmod.BarrierTimeout as err:
        print(f"ivcp run: {err}", file=sys.stderr)
        return 1
    finally:
        if ctx is not None:
            ctx.close()

