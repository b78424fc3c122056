"""Accuracy versus retention: `ivcp run --method ivcp,fastv,... --retention 0.25,0.5,1.0` expands into runner calls.

Each (method, retention) is an ordinary runner call on a registry entry, so every setting gets its own output
folder, fingerprint and resume state. Baselines become registry variants (``<model>_FastV``, ``<model>_Grid_IVC``, ...)
written to a small YAML file under the work dir; retention 1.0 is the unpruned entry, run once and shared
by every method. Afterwards the score files are collected into one table and one plot per dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path


from ivcprune.eval.registry import PRUNED_SUFFIXES, RegistryError, comparison_variants, load_registry, resolve
from ivcprune.methods import make_method, method_names

HEADLINE = ("accuracy", "Overall", "Final Score Norm", "acc")


@dataclass
class Run:
    """One runner call of the sweep."""

    model: str  # the model as the user named it (stem, without the pruning suffix)
    method: str
    retention: float
    entry: str  # registry name passed to --model
    out_name: str  # the runner's output model name (with _r / _k suffixes)
    argv: list[str]


def wants_sweep(argv: list[str]) -> bool:
    """True when a runner command line asks for several settings (--method, or a comma list of retentions)."""
    for i, arg in enumerate(argv):
        if arg == "--method" or arg.startswith("--method="):
            return True
        value = arg.split("=", 1)[1] if arg.startswith("--retention=") else (
            argv[i + 1] if arg == "--retention" and i + 1 < len(argv) else "")
        if "," in value:
            return True
    return False


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ivcp sweep", add_help=False)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--method", default="ivcp", help=f"comma list of {', '.join(method_names())}")
    ap.add_argument("--retention", default="1.0", help="comma list of retentions in (0, 1]")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--work-dir", default="./outputs")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model-config", action="append", default=[])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--metric", default=None, help="score.json key to plot (default: the dataset type's headline)")
    return ap


def _stem_and_pruned(name: str, reg: dict) -> tuple[str, str]:
    """(unpruned entry name, pruned IVCP entry name) for a model given either way."""
    if name not in reg:
        raise RegistryError(f"unknown model {name!r}")
    if reg[name].get("pruning"):
        for suf in PRUNED_SUFFIXES:
            if name.endswith(suf):
                return name[: -len(suf)], name
        raise RegistryError(f"{name}: a sweep needs an _IVCP/_ivcp entry (it registers the unpruned entry too)")
    for suf in PRUNED_SUFFIXES:
        if name + suf in reg:
            return name, name + suf
    raise RegistryError(f"{name}: no {name}_IVCP/_ivcp entry to derive pruned settings from")


def plan(args, retentions: list[float], methods: list[str]) -> list[Run]:
    """Every runner call of the sweep (the registry already holds each IVCP entry's method variants)."""
    reg = load_registry(args.model_config)
    names = [_stem_and_pruned(model, reg) for model in args.model]
    common = ["--data", *args.data, "--work-dir", args.work_dir, *sum((["--model-config", c] for c in args.model_config), [])]
    if args.limit is not None:
        common += ["--limit", str(args.limit)]
    if args.model_path:
        common += ["--model-path", args.model_path]
    runs = []
    for stem, pruned in names:
        if any(r >= 1.0 for r in retentions):  # identity for every method: the unpruned entry, once
            entry = resolve(stem, model_path=args.model_path, registry=reg)
            runs += [Run(stem, m, 1.0, stem, entry.name, ["--model", stem, *common]) for m in methods]
        for method in methods:
            name = pruned if method == "ivcp" else stem + comparison_variants()[method]
            # --layer is K of the methods that select at one layer; K = 0 and multi-stage methods keep their own
            layer = args.layer if make_method(method).selects_at == "layer" else None
            for r in (r for r in retentions if r < 1.0):
                entry = resolve(name, model_path=args.model_path, retention=r, layer=layer, registry=reg)
                extra = ["--retention", format(r, "g")] + (["--layer", str(layer)] if layer else [])
                runs.append(Run(stem, method, r, name, entry.name, ["--model", name, *extra, *common]))
    return runs


def _parse_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError as err:
        raise RegistryError(f"--{what}: {err}") from None
    if not values:
        raise RegistryError(f"--{what}: empty list")
    return values


def score_of(path: Path, metric: str | None) -> float | None:
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    for key in ([metric] if metric else HEADLINE):
        value = payload.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def collect(runs: list[Run], data: list[str], work_dir: Path, limit: int | None, metric: str | None) -> list[dict]:
    """One row per (model, dataset, method, retention) with the headline score (None when the run failed)."""
    suffix = f"_limit{limit}" if limit is not None else ""
    rows = []
    for run in runs:
        for ds in data:
            path = work_dir / run.out_name / f"{run.out_name}_{ds}{suffix}_score.json"
            rows.append({"model": run.model, "dataset": ds, "method": run.method, "retention": run.retention,
                         "score": score_of(path, metric), "output": run.out_name})
    return rows


def write_reports(rows: list[dict], out_dir: Path) -> list[Path]:
    """sweep.csv (long), sweep.md (methods x retentions per model/dataset) and one PNG per model and dataset."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    written = [out_dir / "sweep.csv", out_dir / "sweep.md"]
    df.to_csv(written[0], index=False)
    lines = []
    for (model, ds), part in df.groupby(["model", "dataset"], sort=False):
        wide = part.pivot_table(index="method", columns="retention", values="score", aggfunc="first", sort=False)
        lines += [f"### {model} on {ds}", "", "| method | " + " | ".join(f"{r:g}" for r in wide.columns) + " |",
                  "|---|" + "---|" * len(wide.columns)]
        for method, vals in wide.iterrows():
            cells = ["n/a" if pd.isna(v) else f"{v:.4g}" for v in vals]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        written.append(plot(part, out_dir / f"{model}_{ds}_sweep.png", f"{model} on {ds}"))
    written[1].write_text("\n".join(lines))
    return written


def plot(part, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, sub in part.groupby("method", sort=False):
        sub = sub.dropna(subset=["score"]).sort_values("retention")
        ax.plot(sub["retention"], sub["score"], marker="o", label=method,
                linestyle="-" if "ivc" in method else "--")
    ax.set_xlabel("retention (image tokens kept)")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cli_main(argv: list[str] | None = None) -> int:
    """Run every setting through the runner, then write the table and plots; exit 1 if any setting failed."""
    from ivcprune.eval import runner

    args, rest = _parser().parse_known_args(argv)
    try:
        retentions = sorted(set(_parse_list(args.retention, float, "retention")))
        methods = _parse_list(args.method, str, "method")
        bad = [m for m in methods if m not in method_names()]
        if bad or not all(0.0 < r <= 1.0 for r in retentions):
            raise RegistryError(f"--method must name {', '.join(method_names())} and retentions must be in (0, 1]; "
                                f"got methods {methods}, retentions {retentions}")
        runs = plan(args, retentions, methods)
    except RegistryError as err:
        print(f"ivcp run: {err}", file=sys.stderr)
        return 2
    codes, done = [], {}
    for run in runs:
        key = tuple(run.argv)
        if key not in done:  # the shared unpruned run happens once
            print(f"ivcp run (sweep): {run.method} @ {run.retention:g} -> {run.out_name}", file=sys.stderr)
            done[key] = runner.cli_main([*run.argv, *rest])
        codes.append(done[key])
    rows = collect(runs, args.data, Path(args.work_dir), args.limit, args.metric)
    written = write_reports(rows, Path(args.work_dir) / "sweep")
    print((Path(args.work_dir) / "sweep" / "sweep.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 2 if 2 in codes else (1 if any(codes) else 0)
