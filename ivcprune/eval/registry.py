"""Model registry: names -> family, checkpoint and settings, read from YAML data (docs/HARNESS.md §8).

The YAML files live in the ``registry/`` data folder next to this module (no ``__init__.py`` there, so the
folder never shadows this module). Adding a model means adding YAML (``--model-config`` or
``$IVCP_MODEL_CONFIGS``), never editing code.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).with_name("registry")
PRUNED_SUFFIXES = ("_IVCP", "_ivcp")


def comparison_variants() -> dict[str, str]:
    """Method name -> variant suffix of every comparison method (all but IVC-Prune) in the method registry: every
    IVCP entry also registers them under the same runtime, K and retention (docs/ALGORITHM.md §9)."""
    from ivcprune.methods import variant_suffixes

    return {name: suffix for name, suffix in variant_suffixes().items() if name != "ivcp"}
KNOWN_KEYS = {"family", "checkpoint", "revision", "path_env", "dtype", "attn", "min_pixels", "max_pixels",
              "max_tiles", "pruning", "generation", "box_scale", "aliases", "loader", "prompt_style", "description",
              "options"}


class RegistryError(ValueError):
    """A usage error about model names or overrides (exit code 2)."""


@dataclass
class Entry:
    """One resolved model: registry settings with every override applied."""

    name: str  # output name (includes _r{F} / _k{K} when --retention / --layer are given)
    registry_name: str
    settings: dict = field(default_factory=dict)
    checkpoint_source: str = "registry"  # "--model-path", "$ENV" or "registry"
    overrides: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.settings["family"]

    @property
    def checkpoint(self) -> str:
        return self.settings.get("checkpoint")

    @property
    def pruning(self) -> dict | None:
        return self.settings.get("pruning")

    def get(self, key, default=None):
        return self.settings.get(key, default)

    def fingerprint_payload(self) -> dict:
        return {"registry_name": self.registry_name, "settings": self.settings, "overrides": self.overrides}

    def describe(self) -> str:
        p = self.pruning
        prune = "unpruned" if not p else f"{p.get('method', 'ivcp')} K={p.get('layer')} " \
                                                       f"retention={p.get('retention')}"
        return f"{self.name}: {self.family}, {self.checkpoint} ({self.checkpoint_source}), {prune}"


# --------------------------------------------------------------------------------------------- loading
def _load_file(path: Path) -> dict[str, dict]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: expected a mapping at the top level")
    family = doc.get("family")
    defaults = doc.get("defaults") or {}
    models = doc.get("models") or {}
    out: dict[str, dict] = {}
    for name, spec in models.items():
        spec = dict(spec or {})
        unknown = set(spec) - KNOWN_KEYS
        if unknown:
            raise RegistryError(f"{path}: model {name!r} has unknown keys {sorted(unknown)}")
        settings = _merge(copy.deepcopy(defaults), spec)
        settings.setdefault("family", family)
        if not settings.get("family"):
            raise RegistryError(f"{path}: model {name!r} has no family")
        settings["_source"] = str(path)
        aliases = settings.pop("aliases", []) or []
        for alias in [name, *aliases]:
            out[alias] = copy.deepcopy(settings)
            stem = _strip_suffix(alias)
            if stem and settings.get("pruning"):
                base = copy.deepcopy(settings)
                base["pruning"] = None
                out.setdefault(stem, base)
                for method, suffix in comparison_variants().items():
                    out.setdefault(stem + suffix, method_variant(settings, method))
    return out


def method_variant(settings: dict, method: str) -> dict:
    """An IVCP entry's settings with the pruning method swapped; the retention stays the same, and so does K for
    methods that select at one layer (pre-LLM and multi-stage methods select where they are defined to)."""
    from ivcprune.methods import selects_at

    variant = copy.deepcopy(settings)
    old = variant.get("pruning") or {}
    layer = old.get("layer") if selects_at(method) == "layer" else None
    variant["pruning"] = {"method": method, "layer": layer, "retention": old.get("retention")}
    return variant


def _strip_suffix(name: str) -> str | None:
    for suf in PRUNED_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def config_files(extra: list[str] | None = None) -> list[Path]:
    files = sorted(DATA_DIR.glob("*.yaml"))
    env = os.environ.get("IVCP_MODEL_CONFIGS", "")
    files += [Path(p) for p in env.split(os.pathsep) if p]
    files += [Path(p) for p in (extra or [])]
    for f in files:
        if not f.is_file():
            raise RegistryError(f"model config file not found: {f}")
    return files


def load_registry(extra: list[str] | None = None) -> dict[str, dict]:
    """All names (IVCP entries, their unpruned entries, comparison-method variants and aliases); later files override earlier ones."""
    names: dict[str, dict] = {}
    for f in config_files(extra):
        names.update(_load_file(f))
    return names


# --------------------------------------------------------------------------------------------- resolution
def nearest(name: str, names, n: int = 5) -> list[str]:
    close = difflib.get_close_matches(name, list(names), n=n, cutoff=0.5)
    if not close:
        low = name.lower()
        close = [x for x in names if low in x.lower() or x.lower() in low][:n]
    return close


def unknown_name_error(kind: str, name: str, names) -> RegistryError:
    close = nearest(name, names)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return RegistryError(f"unknown {kind} {name!r}.{hint} Run 'ivcp list {kind}s' for all names.")


def parse_set(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` (dotted keys for nesting, values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise RegistryError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _apply_set(settings: dict, sets: dict) -> None:
    for key, value in sets.items():
        parts = key.split(".")
        if parts[0] not in KNOWN_KEYS - {"aliases"}:
            raise RegistryError(f"--set {key}: unknown registry key {parts[0]!r} (known: {sorted(KNOWN_KEYS)})")
        node = settings
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value


def _fmt_number(x) -> str:
    return format(float(x), "g") if isinstance(x, float) else str(x)


def resolve(name: str, *, model_path: str | None = None, retention: float | None = None, layer: int | None = None,
            sets: dict | None = None, extra_configs: list[str] | None = None,
            registry: dict | None = None) -> Entry:
    """Resolve one name; precedence for the checkpoint: --model-path > $<path_env> > registry checkpoint."""
    reg = registry if registry is not None else load_registry(extra_configs)
    if name not in reg:
        raise unknown_name_error("model", name, reg)
    settings = copy.deepcopy(reg[name])
    settings.pop("_source", None)
    overrides: dict = {}
    out_name = name
    if retention is not None or layer is not None:
        if not settings.get("pruning"):
            raise RegistryError(f"--retention/--layer apply to pruned (_IVCP/_ivcp) entries only; {name!r} is "
                                f"an unpruned entry")
        if retention is not None:
            if not 0.0 < float(retention) <= 1.0:
                raise RegistryError(f"--retention must be in (0, 1], got {retention}")
            settings["pruning"]["retention"] = float(retention)
            overrides["retention"] = float(retention)
            out_name += f"_r{_fmt_number(float(retention))}"
        if layer is not None:
            if int(layer) < 1:
                raise RegistryError(f"--layer must be >= 1, got {layer}")
            settings["pruning"]["layer"] = int(layer)
            overrides["layer"] = int(layer)
            out_name += f"_k{int(layer)}"
    if sets:
        _apply_set(settings, sets)
        overrides["set"] = dict(sets)
    source = "registry"
    env = settings.get("path_env")
    if model_path:
        settings["checkpoint"] = str(model_path)
        source = "--model-path"
    elif env and os.environ.get(env):
        settings["checkpoint"] = os.environ[env]
        source = f"${env}"
    if not settings.get("checkpoint"):
        raise RegistryError(f"{name}: no checkpoint; pass --model-path or set ${env or '<path_env>'}")
    return Entry(name=out_name, registry_name=name, settings=settings, checkpoint_source=source,
                 overrides=overrides)


def fingerprint(entry: Entry, *, prompt_style: str, image_mode: str, dataset_sig: str, major: int) -> str:
    payload = {"entry": entry.fingerprint_payload(), "prompt_style": prompt_style, "image_mode": image_mode,
               "harness_major": major, "dataset": dataset_sig}
    blob = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------- pruning methods
def make_method(pruning: dict | None):
    """The pruning method object of a registry ``pruning:`` block, or None for an unpruned entry.

    ``method`` is a name of ``ivcprune.methods.make_method`` (``ivcp``, ``fastv``, ``random``, ``grid``, each
    also ``+ivc``) or a ``module:callable``; every other key is passed on, so a new method needs no runner change.
    """
    if not pruning:
        return None
    import importlib

    from ivcprune.methods import make_method as method_by_name

    spec = dict(pruning)
    name = str(spec.pop("method", "ivcp"))
    kwargs = {k: v for k, v in spec.items() if v is not None or k == "layer"}
    if ":" in name:
        module_name, attr = name.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)(**kwargs)
    try:
        return method_by_name(name, **kwargs)
    except ValueError as err:
        raise RegistryError(f"{err} (or module:callable)") from None


# --------------------------------------------------------------------------------------------- `ivcp list`
def _print_methods() -> None:
    from ivcprune.methods import method_specs

    rows = [(spec.name + (f", {spec.name}+ivc" if spec.plus_ivc else ""),
             f"_{spec.suffix}" + (f", _{spec.suffix}_IVC" if spec.plus_ivc else ""), spec.summary)
            for spec in method_specs()]
    w1, w2 = (max(len(r[i]) for r in rows) for i in (0, 1))
    for names, suffixes, summary in rows:
        print(f"{names:<{w1}}  {suffixes:<{w2}}  {summary}")


def _print_models(extra: list[str] | None) -> None:
    from ivcprune.eval.wrappers import family_status

    reg = load_registry(extra)
    rows = []
    for name in sorted(reg, key=str.lower):
        s = reg[name]
        p = s.get("pruning")
        prune = "unpruned" if not p else f"K={p.get('layer') or 'default'} r={p.get('retention') or 'default'}"
        ok, _ = family_status(s["family"], s.get("loader"))
        rows.append((name, s["family"], prune, s.get("checkpoint", ""), s.get("path_env") or "-",
                     "" if ok else "not supported yet"))
    widths = [max(len(r[i]) for r in rows + [("name", "family", "pruning", "checkpoint", "path env", "")])
              for i in range(6)]
    header = ("name", "family", "pruning", "checkpoint", "path env", "status")
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _print_datasets() -> None:
    from ivcprune.eval.datasets import dataset_type, list_datasets

    names = list_datasets()
    width = max(len(n) for n in names)
    print(f"{'name'.ljust(width)}  type")
    for name in names:
        print(f"{name.ljust(width)}  {dataset_type(name)}")


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ivcp list", description="List registered models, datasets or methods.")
    ap.add_argument("what", choices=["models", "datasets", "methods"])
    ap.add_argument("--model-config", action="append", default=[], help="extra registry YAML (repeatable)")
    args = ap.parse_args(argv)
    try:
        if args.what == "models":
            _print_models(args.model_config)
        elif args.what == "methods":
            _print_methods()
        else:
            _print_datasets()
    except RegistryError as err:
        print(f"ivcp list: {err}", file=sys.stderr)
        return 2
    return 0
