"""Efficiency summary ``<model>_<dataset>_efficiency.json`` from the per-row stats (docs/HARNESS.md §10).

The stats travel with each record, so a resumed run summarises every session that contributed rows.
"""

from __future__ import annotations

import statistics

STAT_KEYS = ("image_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept", "prefill_ms", "decode_ms",
             "new_tokens")


def _mean(values):
    return float(statistics.fmean(values)) if values else None


def _distinct(stats: list[dict], key: str):
    values = sorted({str(s[key]) for s in stats if s.get(key) is not None})
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _steps(s: dict) -> int:
    """Decode steps of the call that produced the row (the batch's longest answer; the row's own at batch 1)."""
    return int(s.get("decode_steps") or s.get("new_tokens") or 0)


def summarize(records: list[dict], pruned: bool) -> dict:
    """Aggregate the ``stats`` of successful records; warm-up rows are left out of the timing averages."""
    stats = [r["stats"] for r in records if not r.get("error") and isinstance(r.get("stats"), dict)]
    image = [s["image_tokens"] for s in stats if s.get("image_tokens") is not None]
    kept = [s.get("kept_tokens", s.get("image_tokens")) for s in stats if s.get("image_tokens") is not None]
    saved = [s["kv_bytes_full"] - s["kv_bytes_kept"] for s in stats
             if s.get("kv_bytes_full") is not None and s.get("kv_bytes_kept") is not None]
    timed = [s for s in stats if not s.get("warmup") and s.get("prefill_ms") is not None]
    prefill = [float(s["prefill_ms"]) for s in timed]
    # a batch decodes until its longest answer ends: its decode time is spread over the batch's steps
    per_token = [float(s["decode_ms"]) / (_steps(s) - 1) for s in timed
                 if s.get("decode_ms") is not None and _steps(s) >= 2]
    batched = [s for s in timed if s.get("batch_ms") is not None and s.get("batch_size")]
    wall_s = sum(float(s["batch_ms"]) / int(s["batch_size"]) for s in batched) / 1000.0
    if not pruned:
        fraction = 1.0
    else:
        fraction = (sum(kept) / sum(image)) if image and sum(image) > 0 else None
    return {
        "rows": len(records),
        "rows_with_stats": len(stats),
        "pruned": bool(pruned),
        "mean_image_tokens": _mean(image),
        "mean_kept_tokens": _mean(kept),
        "kept_fraction": fraction,
        "mean_kv_bytes_saved": _mean(saved),
        "prefill_ms_mean": _mean(prefill),
        "prefill_ms_p50": float(statistics.median(prefill)) if prefill else None,
        "decode_ms_per_token": _mean(per_token),
        "rows_timed": len(timed),
        "batch_size": max((int(s["batch_size"]) for s in stats if s.get("batch_size")), default=None),
        "rows_per_s": (len(batched) / wall_s) if wall_s > 0 else None,
        "sessions": len({s.get("session") for s in stats if s.get("session")}),
        "device": _distinct(stats, "device"),
        "dtype": _distinct(stats, "dtype"),
        "attn": _distinct(stats, "attn"),
        "world_size": _distinct(stats, "world_size"),
        "image_processor": _distinct(stats, "image_processor"),
    }


def format_summary(model: str, dataset: str, eff: dict) -> str:
    """One human line, printed by the runner and the demo."""
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    return (f"{model} on {dataset}: image tokens {f(eff['mean_image_tokens'], '.1f')}, kept "
            f"{f(eff['mean_kept_tokens'], '.1f')} ({f(eff['kept_fraction'], '.3f')}), KV saved "
            f"{f(eff['mean_kv_bytes_saved'], '.0f')} B/row, prefill {f(eff['prefill_ms_mean'], '.1f')} ms "
            f"(p50 {f(eff['prefill_ms_p50'], '.1f')}), decode {f(eff['decode_ms_per_token'], '.2f')} ms/token, "
            f"{eff['rows_timed']} timed rows, batch {eff.get('batch_size') or 1}, "
            f"{f(eff.get('rows_per_s'), '.2f')} rows/s")
