"""``ivcp demo``: the embedded default, a complete offline grounding evaluation that needs nothing configured.

It draws held-out referring scenes of a fresh seed (``ivcprune.pocket.scenes``), converts them with the project's
own converter into RefCOCO-format TSVs, and evaluates the shipped pocket model (a 1.9 M-parameter stock
Qwen2.5-VL trained here on such scenes, ``ivcprune/pocket/model``) through the real runner: unpruned, IVC-Prune,
FastV, FastV+IVC, random, grid and the "IVC tokens removed" ablation, all at K = 3 of 6 layers and 50 % of the
image tokens. It prints Acc@0.5 with a 95 % bootstrap CI per method, the paired difference to the unpruned model,
the kept fraction and the prefill speed-up measured side by side in this process, and writes
``<work-dir>/demo_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PATH_ENV = "QWEN25VL_7B_PATH"
MODEL = "Qwen2.5-VL-7B-Instruct_Grounding"
DATASET = "RefCOCO_testA_for_qwen25vl"
DEMO_LAYER = 3  # the pocket model has 6 decoder layers: K = 6 // 2, the Qwen default for untuned depths
RETENTION = 0.5
DEMO_MAX_NEW_TOKENS = 32  # the pocket answer {"bbox_2d": [x1, y1, x2, y2]} + <|im_end|> is 30 tokens
# Rows per generate call: the pocket model's answers all have one format and end together, so batching pays
# (about 3x the rows/s of batch 1 on one CPU thread, scripts/batch_throughput.py) with identical predictions.
DEMO_BATCH_SIZE = 8
# summary key -> (registry entry, method name for make_method; None = unpruned)
METHODS = {
    "unpruned": (MODEL, None),
    "ivcp": (MODEL + "_IVCP", "ivcp"),
    "fastv": (MODEL + "_FastV", "fastv"),
    "fastv+ivc": (MODEL + "_FastV_IVC", "fastv+ivc"),
    "random": (MODEL + "_Random", "random"),
    "grid": (MODEL + "_Grid", "grid"),
    "ivc_removed": (MODEL + "_IVCRemoved", "ivc_removed"),
}
BOOTSTRAP = 2000


def nothing_configured(env=None) -> bool:
    """True when LMUData is unset, ~/LMUData is missing and the model path variable is unset."""
    env = os.environ if env is None else env
    return not env.get("LMUData") and not (Path.home() / "LMUData").is_dir() and not env.get(PATH_ENV)


def pocket_model_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "pocket" / "model"


def _table(rows: list[dict], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def bootstrap_ci(values, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % CI of the mean of ``values`` (rows resampled with replacement)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (0.0, 0.0)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n, v.size))
    means = v[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def side_by_side_prefill(checkpoint: Path, scenes: list[dict], methods: dict, layer: int, retention: float,
                         rounds: int = 3) -> dict[str, float]:
    """Median prefill (one forward over the prompt, cache on) per method in ms, methods interleaved per row."""
    import statistics

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ivcprune import prune
    from ivcprune.eval.datasets.grounding import grounding_text
    from ivcprune.methods import make_method
    from ivcprune.models.processor_loading import load_processor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = load_processor(checkpoint)
    objs = {k: (make_method(m, layer, retention) if m else None) for k, m in methods.items()}
    times: dict[str, list[float]] = {k: [] for k in methods}
    inputs = []
    for s in scenes:
        msgs = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": grounding_text(s["expression"], "qwen2_5_vl")}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inputs.append(processor(text=[text], images=[s["image"]], return_tensors="pt"))
    keys = list(methods)
    with torch.inference_mode():
        model(**inputs[0], use_cache=True)  # warm-up
        for r in range(rounds):
            for i, inp in enumerate(inputs):
                order = keys[(i + r) % len(keys):] + keys[:(i + r) % len(keys)]  # rotate who goes first
                for k in order:
                    t0 = time.perf_counter()
                    if objs[k] is None:
                        model(**inp, use_cache=True)
                    else:
                        with prune(model, objs[k]):
                            model(**inp, use_cache=True)
                    times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


HOW_TO_REAL = f"""\
To evaluate real weights on real data instead:
  * data:    put the RefCOCO TSVs in a folder and export LMUData=/path/to/LMUData (or use ~/LMUData);
             convert MDETR annotations with `ivcp convert ... --qwen25` for the *_for_qwen25vl splits.
  * weights: export {PATH_ENV}=/path/to/Qwen2.5-VL-7B-Instruct, or pass --model-path to `ivcp run`,
             or let Hugging Face fetch Qwen/Qwen2.5-VL-7B-Instruct (its cache and HF_HUB_OFFLINE are honoured).
  * then:    bash scripts/test_ivcp_qwen_grounding.sh            (all 8 splits; extra args pass through, e.g. --limit 20)"""


def _one_thread() -> None:
    """The pocket model is fastest on one thread; extra threads only spin when CPUs are shared."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)


def _training(checkpoint: Path) -> dict | None:
    card = checkpoint / "training.json"
    return json.loads(card.read_text()) if card.is_file() else None


def task_objects(checkpoint: Path) -> tuple[int, int]:
    """Objects per scene of the task the checkpoint was trained on (its last training phase)."""
    t = _training(checkpoint)
    return tuple(t["args"].get("objects", (2, 3))) if t else (2, 3)


def task_line(objects: tuple[int, int]) -> str:
    if objects[1] == 1:
        return ("Task: single-object localization: one coloured shape per picture, the prompt names it ('the red "
                "circle'), the answer is its box (random-object chance is 1 by construction: a box must be found).")
    return (f"Task: referring: {objects[0]}-{objects[1]} coloured shapes per picture, the expression ('the red circle') "
            "names one, the answer is its box.")


def _model_line(checkpoint: Path) -> str:
    t = _training(checkpoint)
    if t is None:
        return f"pocket model at {checkpoint}"
    a = t["arch"]
    return (f"stock Qwen2_5_VLForConditionalGeneration, {t['parameters'] / 1e6:.2f} M parameters ({a['layers']} decoder "
            f"layers, hidden {a['hidden']}, 100 image tokens per 280x280 picture), trained from scratch here on one "
            f"CPU thread for {t['minutes']:.0f} minutes ({t['steps']} steps x {t['args']['batch']} scenes)")


def run_demo(work: Path, data: Path, rows: int, seed: int, max_new_tokens: int, extra: list[str],
             checkpoint: Path | None = None, timing_rows: int = 8, batch_size: int = DEMO_BATCH_SIZE) -> dict:
    """Build the held-out split, run every method through the runner, return the summary dict."""
    import pandas as pd

    from ivcprune.eval import runner
    from ivcprune.eval.registry import resolve
    from ivcprune.pocket.scenes import build_lmudata

    checkpoint = checkpoint or pocket_model_dir()
    objects = task_objects(checkpoint)
    built = build_lmudata(data, n=rows, seed=seed, n_objects=objects)
    print(f"held-out scenes: {rows} (seed {seed}, {objects[0]}-{objects[1]} objects each) under {data}; "
          f"random-object chance {built['chance']:.3f}", flush=True)
    common = ["--data", DATASET, "--work-dir", str(work), "--model-path", str(checkpoint),
              "--set", f"generation.max_new_tokens={max_new_tokens}", "--warmup", "1", "--batch-size", str(batch_size),
              *extra]
    names, old = {}, os.environ.get("LMUData")
    os.environ["LMUData"] = str(data.absolute())
    try:
        for key, (entry, method) in METHODS.items():
            prune_args = [] if method is None else ["--layer", str(DEMO_LAYER), "--retention", str(RETENTION)]
            rc = runner.cli_main(["--model", entry, *prune_args, *common])
            if rc:
                raise RuntimeError(f"the runner failed for {entry} (exit {rc}); see the messages above")
            names[key] = resolve(entry, model_path=str(checkpoint), retention=RETENTION if method else None,
                                 layer=DEMO_LAYER if method else None).name
    finally:
        if old is None:
            os.environ.pop("LMUData", None)
        else:
            os.environ["LMUData"] = old
    timing = side_by_side_prefill(checkpoint, built["scenes"][:timing_rows], {k: m for k, (_, m) in METHODS.items()},
                                  DEMO_LAYER, RETENTION)
    hits, out = {}, {}
    for key, name in names.items():
        stem = work / name / f"{name}_{DATASET}"
        score = json.loads(Path(f"{stem}_score.json").read_text())
        eff = json.loads(Path(f"{stem}_efficiency.json").read_text())
        result = pd.read_csv(f"{stem}_result.csv").sort_values("index")
        hits[key] = result["hit@0.5"].astype(float).to_numpy()
        lo, hi = bootstrap_ci(hits[key])
        out[key] = {"acc@0.5": float(score["accuracy"]), "ci95": [round(lo, 4), round(hi, 4)],
                    "mean_iou": round(float(score["mean_iou"]), 4),
                    "kept_fraction": round(float(eff["kept_fraction"] if key != "unpruned" else 1.0), 4),
                    "prefill_ms": round(timing[key], 3)}
    paired = {}
    for key in METHODS:
        if key == "unpruned":
            continue
        diff = hits[key] - hits["unpruned"]
        lo, hi = bootstrap_ci(diff)
        paired[key] = {"diff": round(float(diff.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)],
                       "speedup": round(timing["unpruned"] / timing[key], 3)}
    return {"rows": rows, "seed": seed, "retention": RETENTION, "layer": DEMO_LAYER, "methods": out,
            "paired_vs_unpruned": paired, "chance": round(built["chance"], 4), "model": _model_line(checkpoint)}


def format_summary(summary: dict) -> str:
    rows = []
    for key, m in summary["methods"].items():
        p = summary["paired_vs_unpruned"].get(key)
        rows.append({"method": key, "Acc@0.5": f"{m['acc@0.5']:.3f}",
                     "95% CI": f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]",
                     "vs unpruned [95% CI]": "-" if p is None else f"{p['diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
                     "mIoU": f"{m['mean_iou']:.3f}", "kept": f"{m['kept_fraction']:.2f}",
                     "prefill ms": f"{m['prefill_ms']:.1f}",
                     "speed-up": "1.00x" if p is None else f"{p['speedup']:.2f}x"})
    return _table(rows, list(rows[0]))


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ivcp demo", description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default=os.environ.get("WORK_DIR", "./outputs/demo"),
                    help="output root (default ./outputs/demo)")
    ap.add_argument("--data-dir", default=None, help="where the held-out LMUData goes (default <work-dir>/LMUData)")
    ap.add_argument("--rows", type=int, default=100, help="held-out referring expressions (default 100)")
    ap.add_argument("--seed", type=int, default=2026, help="scene seed of the held-out split (default 2026)")
    ap.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    ap.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE,
                    help=f"rows per generate call in every run (default {DEMO_BATCH_SIZE}; the predictions do not "
                         "depend on it)")
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)  # another pocket checkpoint (tests)
    args, extra = ap.parse_known_args(argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")  # exit 2 before any scene is drawn

    t0 = time.perf_counter()
    _one_thread()
    work = Path(args.work_dir)
    data = Path(args.data_dir) if args.data_dir else work / "LMUData"
    checkpoint = Path(args.model_path) if args.model_path else pocket_model_dir()
    print("=" * 100)
    print("ivcp demo: nothing is configured (no LMUData, no ~/LMUData, no $" + PATH_ENV + "), so this runs the")
    print("EMBEDDED DEMO on the POCKET MODEL: " + _model_line(checkpoint) + ".")
    print(task_line(task_objects(checkpoint)))
    print("It is a miniature for seeing what pruning does on a CPU, not a general model; numbers do not transfer to")
    print(f"Qwen2.5-VL-7B. Every method runs through the real runner at K={DEMO_LAYER} of 6 layers, "
          f"{RETENTION:.0%} of the image tokens.")
    print("=" * 100, flush=True)
    try:
        summary = run_demo(work, data, args.rows, args.seed, args.max_new_tokens, extra, checkpoint,
                           batch_size=args.batch_size)
    except RuntimeError as err:
        print(f"ivcp demo: {err}", file=sys.stderr)
        return 1
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"Acc@0.5 on {summary['rows']} held-out scenes (seed {summary['seed']}); random-object chance "
          f"{summary['chance']:.3f}; 95 % CIs by bootstrap over rows ({BOOTSTRAP} resamples), differences paired:")
    print(format_summary(summary))
    print("kept = kept share of the image tokens (ivc_removed keeps all but the IVC tokens, whatever the budget);")
    print("prefill ms = median of one prompt forward, all methods interleaved row by row in this process;")
    print("speed-up = unpruned / method prefill, measured side by side. Outputs: " + str(work.absolute()))
    print(HOW_TO_REAL)
    print(f"(demo finished in {time.perf_counter() - t0:.1f} s)")
    return 0
