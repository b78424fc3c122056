"""`ivcp bench`: prefill/decode latency, peak memory, KV bytes and FLOPs, pruned against unpruned
(docs/ALGORITHM.md §8).

Every setting runs in one process, interleaved (unpruned, method 1, method 2, ... rotated each repeat) after a
warm-up, and reports medians and ratios to the unpruned run: on a shared, noisy machine only side-by-side
numbers mean anything. Models come from a real-shaped config built in memory (``--synthetic``), a local
checkpoint or a registry entry; inputs are built by hand, so no processor is needed for the synthetic shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ivcprune.tools import benchkit as kit

QUICK_DEFAULTS = dict(synthetic="quick", methods="ivcp", retention="0.5", repeats=9, warmup=1, decode_tokens=0,
                      memory=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivcp bench", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", help=f"random model(s) with a real shape, built in memory; comma list of "
                                          f"{', '.join(sorted(kit.SHAPES))}")
    src.add_argument("--model", help="registry model name (loads its checkpoint)")
    src.add_argument("--checkpoint", help="local checkpoint folder (Qwen2/2.5/3-VL or LLaVA layout)")
    p.add_argument("--quick", action="store_true", help="prefill only, mid-size random Qwen2.5-VL (8 layers, hidden 512, "
                   "1024 image tokens, K=2), IVC-Prune at retention 0.5")
    p.add_argument("--layers", type=int, help="decoder depth of a synthetic model (default: the shape's own)")
    p.add_argument("--width", type=float, default=None,
                   help="scale hidden/MLP width and head counts of a synthetic model (head_dim kept); "
                        "default 1.0 on CUDA, 0.25 on CPU for the 7B shapes")
    p.add_argument("--image-tokens", type=int, help="image tokens of the synthetic prompt (Qwen: a square grid)")
    p.add_argument("--layer", type=int, help="K (default: the shape's K scaled to the depth)")
    p.add_argument("--methods", default="ivcp,fastv,random,grid", help="comma list of registered methods (ivcp list methods)")
    p.add_argument("--retention", default="0.5", help="comma list of retentions")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per setting (>= 5 for reports)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=16, help="T: decode latency is the median over steps 2..T (0: skip)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on CPU: on a shared CPU, OpenMP barriers stall on descheduled "
                        "threads and make small ops 100x slower; pass N on a dedicated machine)")
    p.add_argument("--out", default=None, help="output folder for bench.json, bench.md and bench.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the memory pass (one run per setting after the timing runs)")
    return p


@dataclass
class Setting:
    label: str
    method: object  # PruningMethod or None (unpruned)
    retention: float
    runs: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)  # the one memory-pass run


def run_bench(args) -> dict:
    """Build the model and inputs, measure every setting interleaved, and return the report dict."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        return _measure(args, device)
    finally:
        torch.set_num_threads(threads)


def _measure(args, device) -> dict:
    dtype = kit.parse_dtype(args.dtype, device)
    bundle = kit.load_bundle(args, device, dtype)
    settings = _settings(args, bundle)
    with torch.no_grad():
        for _ in range(args.warmup):
            for s in settings:
                kit.measure_once(bundle, s.method, decode_tokens=args.decode_tokens)
        for rep in range(args.repeats):
            shift = rep % len(settings)
            for s in settings[shift:] + settings[:shift]:
                s.runs.append(kit.measure_once(bundle, s.method, decode_tokens=args.decode_tokens))
        if args.memory:
            kit.isolate_cpu_allocations(device)
            kit.measure_once(bundle, None, decode_tokens=args.decode_tokens)  # settle the allocator first
            for s in settings:
                s.memory = kit.measure_once(bundle, s.method, decode_tokens=args.decode_tokens, memory=True)
    return _report(args, bundle, settings, device, dtype)


def _settings(args, bundle) -> list[Setting]:
    from ivcprune.methods import make_method, selects_at

    settings = [Setting("unpruned", None, 1.0)]
    for ret in _floats(args.retention):
        for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
            layer = bundle.layer if selects_at(name) == "layer" else None  # K = 0 / a schedule: their own layers
            settings.append(Setting(f"{name}@{ret:g}", make_method(name, layer, ret), ret))
    return settings


def _floats(text: str) -> list[float]:
    return [float(x) for x in str(text).split(",") if x.strip()]


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _report(args, bundle, settings: list[Setting], device, dtype) -> dict:
    base = settings[0]
    base_text = _median([r["text_ms"] for r in base.runs])
    shape = bundle.shape_info
    rows = []
    for s in settings:
        runs = s.runs
        text_ms = _median([r["text_ms"] for r in runs])
        sel = runs[-1]["selection"]
        kept = sel["kept_count"][0] if sel else bundle.prompt_length
        layer = sel["layer"] if sel else bundle.layer
        stages = [(st["layer"], st["kept_count"][0]) for st in sel.get("stages", [])[1:]] if sel else []
        flops = kit.prefill_flops(bundle.flop_model, bundle.prompt_length, kept, layer, pruned=s.method is not None,
                                  stages=stages)
        ideal = flops["full"] / flops["pruned"]
        paired = [b["text_ms"] / r["text_ms"] for b, r in zip(base.runs, runs)]  # same repeat: adjacent in time
        measured = _median(paired)
        measured_min = min(r["text_ms"] for r in base.runs) / min(r["text_ms"] for r in runs)
        selection_ms = _median([r["selection"]["selection_ms"] for r in runs if r["selection"]]) if sel else 0.0
        decode = _median([r["decode_ms_per_token"] for r in runs])
        kv_measured = runs[-1]["kv_bytes"]
        n_layers = bundle.flop_model["num_layers"]
        ends = [st for st, _ in stages] + [n_layers]
        per_layer = kept * ends[0] + sum((end - st) * count for (st, count), end in zip(stages, ends[1:]))
        kv_analytic = kit.analytic_kv_bytes(bundle.flop_model, per_layer / n_layers if stages else kept,
                                            bundle.element_size)
        rows.append({
            "setting": s.label,
            "method": s.method.label() if s.method is not None else "none",
            "retention": s.retention,
            "layers": [layer] + [st for st, _ in stages] if sel else [],  # K (K1, K2, ... for multi-stage)
            "prompt_length": bundle.prompt_length,
            "image_tokens": bundle.image_tokens,
            "kept_tokens": kept,
            "kept_image_tokens": sel["kept_image_tokens"][0] if sel else bundle.image_tokens,
            "prefill_text_ms": text_ms,
            "prefill_text_ms_min": min(r["text_ms"] for r in runs),
            "prefill_total_ms": _median([r["total_ms"] for r in runs]),
            "vision_ms": _median([r["vision_ms"] for r in runs]),
            "selection_ms": selection_ms,
            "selection_pct_of_prefill": (100.0 * selection_ms / text_ms) if text_ms and sel else 0.0,
            "decode_ms_per_token": decode,
            "decode_speedup": _median([b["decode_ms_per_token"] / r["decode_ms_per_token"]
                                       for b, r in zip(base.runs, runs)
                                       if b["decode_ms_per_token"] and r["decode_ms_per_token"]]),
            "peak_prefill_mib": s.memory.get("peak_prefill_mib"),
            "peak_decode_mib": s.memory.get("peak_decode_mib"),
            "kv_bytes": kv_measured,
            "kv_bytes_record": sel["kv_bytes_kept"][0] if sel else None,
            "kv_bytes_analytic": kv_analytic,
            "prefill_tflops": flops["pruned"] / 1e12,
            "ideal_speedup": ideal,
            "measured_speedup": measured,
            "measured_speedup_of_medians": base_text / text_ms if text_ms else None,
            "measured_speedup_of_minimums": measured_min,
            "speedup_ratio": (measured / ideal) if measured else None,
            "raw_text_ms": [r["text_ms"] for r in runs],
        })
    return {
        "model": bundle.name,
        "shape": shape,
        "device": kit.device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "attn": bundle.attn,
        "threads": torch.get_num_threads(),
        "batch": 1,
        "layer": bundle.layer,
        "num_layers": bundle.flop_model["num_layers"],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "decode_tokens": args.decode_tokens,
        "flop_model": bundle.flop_model,
        "rows": rows,
    }


def format_quick(report: dict) -> str:
    """The few lines `ivcp bench --quick` prints."""
    shape = report["shape"]
    row = report["rows"][1]
    base = report["rows"][0]
    lines = [
        f"model: {report['model']} ({shape}), {report['device']}, {report['dtype']}, {report['attn']}, "
        f"{report['threads']} threads, K={report['layer']}/{report['num_layers']}",
        f"prompt S={row['prompt_length']} (image L={row['image_tokens']}), kept P={row['kept_tokens']} "
        f"(image {row['kept_image_tokens']}), {report['repeats']} interleaved repeats, medians",
        f"prefill (text model): unpruned {base['prefill_text_ms']:.1f} ms, {row['setting']} {row['prefill_text_ms']:.1f} ms "
        f"(vision encoder {row['vision_ms']:.1f} ms, excluded)",
        f"measured speedup {row['measured_speedup']:.3f}x (median of paired ratios; of medians "
        f"{row['measured_speedup_of_medians']:.3f}x, of minimums {row['measured_speedup_of_minimums']:.3f}x)",
        f"ideal (FLOPs) {row['ideal_speedup']:.3f}x, ratio measured/ideal {row['speedup_ratio']:.3f} (target >= 0.9)",
        f"selection overhead {row['selection_ms']:.2f} ms = {row['selection_pct_of_prefill']:.2f} % of pruned prefill "
        f"(target <= 3 %)",
        f"KV cache: {base['kv_bytes']} -> {row['kv_bytes']} B (record {row['kv_bytes_record']}, analytic "
        f"{row['kv_bytes_analytic']})",
    ]
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """Markdown table of one report: medians and ratios to the unpruned row."""
    head = ("| setting | S | P | prefill ms | ideal x | measured x | ratio | select % | decode ms/tok | decode x | "
            "KV MiB | peak prefill MiB | peak decode MiB | TFLOPs |")
    lines = [f"**{report['model']}** ({report['shape']}), {report['device']}, {report['dtype']}, {report['attn']}, "
             f"K={report['layer']}/{report['num_layers']}, {report['repeats']} interleaved repeats (medians)", "",
             head, "|" + "---|" * (head.count("|") - 1)]

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['prompt_length']} | {r['kept_tokens']} | {f(r['prefill_text_ms'], '.1f')} | "
            f"{f(r['ideal_speedup'], '.2f')} | {f(r['measured_speedup'], '.2f')} | {f(r['speedup_ratio'], '.2f')} | "
            f"{f(r['selection_pct_of_prefill'], '.2f')} | {f(r['decode_ms_per_token'], '.2f')} | "
            f"{f(r['decode_speedup'], '.2f')} | {f(r['kv_bytes'] / 2**20 if r['kv_bytes'] else None, '.2f')} | "
            f"{f(r['peak_prefill_mib'], '.0f')} | {f(r['peak_decode_mib'], '.0f')} | {f(r['prefill_tflops'], '.3f')} |")
    return "\n".join(lines)


def plot(reports: list[dict], path: Path) -> None:
    """Bar chart: measured vs ideal prefill speedup and decode speedup per setting (one panel per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        rows = rep["rows"][1:] or rep["rows"]
        x = range(len(rows))
        width = 0.27
        ax.bar([i - width for i in x], [r["ideal_speedup"] or 0 for r in rows], width, label="ideal (FLOPs)")
        ax.bar(list(x), [r["measured_speedup"] or 0 for r in rows], width, label="measured prefill")
        ax.bar([i + width for i in x], [r["decode_speedup"] or 0 for r in rows], width, label="measured decode")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(x))
        ax.set_xticklabels([r["setting"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speedup vs unpruned")
        ax.set_title(f"{rep['model']}\nK={rep['layer']}/{rep['num_layers']}, {rep['device']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(reports: list[dict], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(reports, indent=1))
    paths["md"].write_text("\n\n".join(format_table(r) for r in reports) + "\n")
    plot(reports, paths["png"])
    return paths


def cli_main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK_DEFAULTS.items():
            if parser.get_default(key) == getattr(args, key, None) or getattr(args, key, None) is None:
                setattr(args, key, value)
    if not (args.synthetic or args.model or args.checkpoint):
        parser.error("choose a model: --synthetic SHAPE, --model NAME, --checkpoint DIR, or --quick")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    shapes = [x.strip() for x in args.synthetic.split(",")] if args.synthetic else [None]
    unknown = [x for x in shapes if x is not None and x not in kit.SHAPES]
    if unknown:
        parser.error(f"unknown --synthetic shape(s) {unknown}; choose from {sorted(kit.SHAPES)}")
    started = time.perf_counter()
    reports = []
    for shape in shapes:
        args.synthetic = shape
        report = run_bench(args)
        reports.append(report)
        print(format_quick(report) if args.quick else format_table(report), flush=True)
    if args.out:
        paths = write_outputs(reports, Path(args.out))
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(f"bench time {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


__all__ = ["cli_main", "run_bench", "format_quick", "format_table", "write_outputs", "plot", "Setting"]
