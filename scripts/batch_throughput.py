"""Evaluation throughput (rows/s) at several batch sizes, measured side by side in one process (issue 13).

Each setting runs the runner's own inference loop (``runner.infer_rows``: TSV row -> image decode and re-encode ->
prompt -> batched ``generate`` under IVC-Prune -> a fsynced part-file record per row) on the same rows with the same
loaded model, one thread; the batch sizes are interleaved and their order rotates every round, after one warm-up
batch per setting. The models:

* ``pocket``: the bundled pocket model (``ivcprune/pocket/model``, the model ``ivcp demo`` evaluates: a trained
  1.9 M-parameter stock Qwen2.5-VL, 6 layers, 100 image tokens per picture) on held-out pocket scenes converted to
  the RefCOCO TSV format, K = 3 of 6 as in the demo, retention 0.5; it answers in one JSON box format, so the rows
  of a batch end together;
* ``demo``: the bundled demo model (the tiny random-weight Qwen2.5-VL of ``ivcprune.testing``) on the demo's
  synthetic RefCOCO split, K = 2 of 4 layers, retention 0.5;
* ``demo-fixed``: the same with the end-of-answer ids switched off, so every row decodes ``--max-new-tokens`` (random
  weights answer with bimodal lengths, a few tokens or the maximum; a trained model answering one format does not);
* ``bench``: ``ivcp bench``'s Qwen2.5-VL-7B shape on CPU (8 layers, width x0.25: hidden 896, 7 heads / 1 KV head,
  MLP 4736, vocabulary 152064, 1024 image tokens per row; K = 5 of 8 as the bench scales K = 16 of 28), random
  weights (which never emit the end-of-answer id), the same synthetic split resized to 1024 image tokens.

Predictions are compared across batch sizes row by row; timings are ratios from one run, never absolute claims.

    .venv/bin/python scripts/batch_throughput.py --models pocket,demo,demo-fixed,bench --batch-sizes 1,4,8,16 --out DIR
    .venv/bin/python scripts/batch_throughput.py --plot-from DIR1/throughput.json DIR2/throughput.json --png P.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

BENCH_SHAPE = dict(layers=8, hidden=896, heads=7, kv_heads=1, intermediate=4736, vocab=152064, image_tokens=1024,
                   layer=5)


def bench_checkpoint(folder: Path) -> Path:
    """A Qwen2.5-VL checkpoint of the bench shape with the tiny tokenizer and PIL processor (random weights)."""
    import torch
    import transformers as tf

    from ivcprune.testing import make_tiny_checkpoint

    pixels = BENCH_SHAPE["image_tokens"] * 28 * 28
    make_tiny_checkpoint("qwen2_5_vl", folder, layers=BENCH_SHAPE["layers"], hidden=BENCH_SHAPE["hidden"],
                         heads=BENCH_SHAPE["heads"], kv_heads=BENCH_SHAPE["kv_heads"], min_pixels=pixels,
                         max_pixels=pixels)
    config = tf.AutoConfig.from_pretrained(folder)
    config.text_config.intermediate_size = BENCH_SHAPE["intermediate"]
    config.text_config.vocab_size = BENCH_SHAPE["vocab"]
    generation = tf.GenerationConfig.from_pretrained(folder)
    torch.manual_seed(0)
    model = tf.Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.generation_config = generation
    model.save_pretrained(folder)
    return folder


def setting(name: str, work: Path, rows: int) -> dict:
    """Checkpoint, K, pixel budget, answer length and LMUData folder of one measured model."""
    from ivcprune.testing import tiny_checkpoint

    demo_data = work / "LMUData"
    if name == "pocket":
        from ivcprune.pocket.scenes import build_lmudata
        from ivcprune.tools.demo import DEMO_LAYER, DEMO_MAX_NEW_TOKENS, pocket_model_dir, task_objects

        checkpoint = pocket_model_dir()
        data = work / "pocket-LMUData"
        build_lmudata(data, n=rows, seed=2026, n_objects=task_objects(checkpoint))
        return {"checkpoint": checkpoint, "layer": DEMO_LAYER, "sets": {}, "data": data,
                "max_new_tokens": DEMO_MAX_NEW_TOKENS}
    if name in ("demo", "demo-fixed"):
        return {"checkpoint": tiny_checkpoint("qwen2_5_vl"), "layer": 2, "sets": {}, "data": demo_data}
    if name == "bench":
        pixels = BENCH_SHAPE["image_tokens"] * 28 * 28
        return {"checkpoint": bench_checkpoint(work / "bench-checkpoint"), "layer": BENCH_SHAPE["layer"],
                "sets": {"min_pixels": pixels, "max_pixels": pixels}, "data": demo_data}
    raise SystemExit(f"unknown model {name!r} (pocket, demo, demo-fixed, bench)")


def measure(name: str, args, work: Path) -> dict:
    from ivcprune.eval import runner
    from ivcprune.eval.dist import DistContext
    from ivcprune.eval.registry import resolve
    from ivcprune.eval.wrappers import load_model

    n_rows, rounds = (args.bench_rows, args.bench_rounds) if name == "bench" else (args.rows, args.rounds)
    spec = setting(name, work, n_rows)
    max_new_tokens = args.max_new_tokens or spec.get("max_new_tokens", 16)
    sets = {"generation.max_new_tokens": max_new_tokens, **spec["sets"]}
    os.environ["LMUData"] = str(spec["data"])
    entry = resolve("Qwen2.5-VL-7B-Instruct_Grounding_IVCP", model_path=str(spec["checkpoint"]),
                    layer=spec["layer"], retention=0.5, sets=sets)
    slot = runner.ModelSlot(entry, "cpu")
    slot.model = load_model(entry, device="cpu")
    if name.endswith("-fixed"):
        slot.model.model.generation_config.eos_token_id = None  # every row decodes max_new_tokens
    ds = runner.open_dataset("RefCOCO_testA_for_qwen25vl", n_rows, "vlmeval")
    rows = ds.rows["index"].tolist()
    ctx = DistContext(rank=0, world_size=1)

    def run(size: int, tag: str, rows: list = rows) -> tuple[float, list]:
        pair = runner.Pair(entry, "RefCOCO_testA_for_qwen25vl", work / f"{name}-{tag}-b{size}", n_rows)
        opts = SimpleNamespace(batch_size=size, warmup=0, verbose=False)
        t0 = time.perf_counter()
        errors = runner.infer_rows(pair, ds, rows, slot, ctx, "fp", "session", opts)
        wall = time.perf_counter() - t0
        from ivcprune.eval import store

        records = sorted(store.read_part(pair.part(0)), key=lambda r: str(r["index"]))
        shutil.rmtree(pair.out_dir)
        if errors:
            raise SystemExit(f"{name} batch {size}: {errors} rows failed")
        return wall, records

    sizes = args.batch_sizes
    for size in sizes:  # warm-up: one batch per setting, not measured
        run(size, "warmup", rows[:size])
    walls = {size: [] for size in sizes}
    prefill = {size: [] for size in sizes}  # seconds in first forwards (vision + prefill + selection) per round
    answers = {}
    for r in range(rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for size in order:
            wall, records = run(size, f"r{r}")
            walls[size].append(wall)
            prefill[size].append(sum(rec["stats"]["prefill_ms"] / rec["stats"].get("batch_size", 1)
                                     for rec in records) / 1000.0)
            answers[size] = [(rec["index"], rec["prediction"], rec["stats"]["kept_tokens"]) for rec in records]
            if size == sizes[0]:
                steps = [rec["stats"]["decode_steps"] for rec in records]  # alone when the first setting is 1
            print(f"  {name} round {r} batch {size:>2}: {len(rows) / wall:7.2f} rows/s, {wall:.2f} s of which "
                  f"{prefill[size][-1]:.2f} s in first forwards", file=sys.stderr, flush=True)
    base = answers[sizes[0]]
    same = {size: answers[size] == base for size in sizes}
    first = min(range(rounds), key=lambda r: walls[sizes[0]][r])
    share = prefill[sizes[0]][first] / walls[sizes[0]][first]
    out = {"rows": len(rows), "rounds": rounds, "layer": spec["layer"], "max_new_tokens": max_new_tokens,
           "mean_decode_steps_first": sum(steps) / len(steps),
           "prefill_share_first": share, "settings": {}}
    for size in sizes:
        best = min(walls[size])
        out["settings"][str(size)] = {"rows_per_s": len(rows) / best, "walls_s": [round(w, 3) for w in walls[size]],
                                      "first_forwards_s": [round(t, 3) for t in prefill[size]],
                                      "speedup_vs_first": min(walls[sizes[0]]) / best,
                                      "predictions_equal_to_first": same[size]}
    return out


def table(results: dict, sizes: list[int]) -> str:
    """Rows/s per batch size, and the share of the first setting's wall spent in first forwards (vision + prefill +
    selection): where that prefill is compute-bound, batching cannot make it faster, so 1 / share bounds the gain."""
    lines = ["| model | " + " | ".join(f"batch {s}" for s in sizes)
             + " | predictions equal | decode steps per row (first setting, mean) | prefill share of the first setting |",
             "|---|" + "---|" * (len(sizes) + 3)]
    for name, res in results.items():
        cells = [f"{res['settings'][str(s)]['rows_per_s']:.2f} rows/s ({res['settings'][str(s)]['speedup_vs_first']:.2f}x)"
                 for s in sizes]
        equal = all(res["settings"][str(s)]["predictions_equal_to_first"] for s in sizes)
        share = res["prefill_share_first"]
        head = f"| {name} ({res['rows']} rows, best of {res.get('rounds', '?')}) | "
        lines.append(head + " | ".join(cells) + f" | {'yes' if equal else 'NO'} | "
                     f"{res['mean_decode_steps_first']:.1f} | {share:.0%} |")
    return "\n".join(lines)


LABELS = {"pocket": "bundled pocket model", "demo": "tiny random Qwen2.5-VL",
          "demo-fixed": "tiny random, all answers 16 tokens", "bench": "bench's Qwen2.5-VL-7B shape"}


def plot(results: dict, path: Path) -> None:
    """Speed-up over the first batch size per model (one line each), with the 2x target and, dotted, each model's
    prefill bound 1 / share (what batching could give at most if the prefill is compute-bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, res in results.items():
        sizes = sorted(int(k) for k in res["settings"])
        ups = [res["settings"][str(k)]["speedup_vs_first"] for k in sizes]
        share = res["prefill_share_first"]
        line, = ax.plot(sizes, ups, marker="o",
                        label=f"{LABELS.get(name, name)} (prefill {share:.0%} of batch {sizes[0]})")
        if share > 0.5:
            ax.axhline(1 / share, color=line.get_color(), ls=":", lw=1,
                       label=f"its bound if decoding were free: 1 / {share:.2f} = {1 / share:.2f}x")
    ax.axhline(2.0, color="grey", ls="--", lw=1, label="target at batch 8: 2x")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    ax.set_xlabel("batch size (rows per generate call)")
    ax.set_ylabel("rows/s relative to batch 1")
    ax.set_title("End-to-end evaluation throughput, one CPU thread, IVC-Prune at 0.5", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="pocket,demo,demo-fixed,bench",
                    help="comma list of pocket, demo, demo-fixed, bench")
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--rows", type=int, default=64, help="rows per model except the bench shape (default 64)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the best wall per setting counts")
    ap.add_argument("--bench-rows", type=int, default=16, help="rows for the bench shape (about 4 s per row alone)")
    ap.add_argument("--bench-rounds", type=int, default=2, help="rounds for the bench shape")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="answer budget (default: 32 for the pocket model, as in the demo; 16 for the others)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="folder for throughput.json, throughput.md and throughput.png")
    ap.add_argument("--plot-from", nargs="+", default=None, metavar="JSON",
                    help="measure nothing: draw the throughput.json files of earlier runs into one --png")
    ap.add_argument("--png", default="throughput.png", help="with --plot-from: the picture to write")
    args = ap.parse_args(argv)
    if args.plot_from:
        merged = {}
        for f in args.plot_from:
            merged.update(json.loads(Path(f).read_text())["results"])
        plot(merged, Path(args.png))
        print(f"wrote {args.png}")
        return 0
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",")]

    os.environ.setdefault("TQDM_DISABLE", "1")  # the runner's progress bars would drown the measurements
    import torch

    torch.set_num_threads(args.threads)
    from ivcprune.eval.demo_data import build_demo_lmudata

    work = Path(tempfile.mkdtemp(prefix="ivcp-throughput-"))
    try:
        build_demo_lmudata(work / "LMUData", n=max(args.rows, args.bench_rows), seed=0)
        results = {}
        for name in args.models.split(","):
            results[name] = measure(name, args, work)
        text = table(results, args.batch_sizes)
        print(f"rows/s end to end (runner loop, IVC-Prune at 0.5, greedy, "
              f"{args.threads} thread(s), best of the interleaved rounds; speed-up vs batch "
              f"{args.batch_sizes[0]}):")
        print(text)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "throughput.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
            (out / "throughput.md").write_text(text + "\n")
            plot(results, out / "throughput.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
