"""The method registry: one registration per method feeds ``make_method``, the registry's variant names, the CLI
choices, the sweep and the bench (docs/ARCHITECTURE.md §4).

    @register_method("fastv", suffix="FastV", summary="attention received at layer K-1")
    @dataclass
    class FastV(BudgetedMethod): ...

``plus_ivc=True`` also registers "<name>+ivc" (registry suffix "_<suffix>_IVC"): the method wrapped in ``WithIVC``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str  # CLI / API name, e.g. "fastv"
    cls: type
    suffix: str  # registry variant suffix without the underscore, e.g. "FastV" -> <model>_FastV
    summary: str
    aliases: tuple[str, ...] = ()
    plus_ivc: bool = True  # "<name>+ivc" exists (IVC tokens first, then this method fills the budget)


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, suffix: str, summary: str, aliases: tuple[str, ...] = (), plus_ivc: bool = True):
    """Class decorator: register a pruning method under ``name`` (and its aliases)."""

    def wrap(cls):
        spec = MethodSpec(name=name, cls=cls, suffix=suffix, summary=summary, aliases=tuple(aliases), plus_ivc=plus_ivc)
        for key in (name, *aliases):
            if key in _METHODS and _METHODS[key].cls is not cls:
                raise ValueError(f"method name {key!r} is already registered by {_METHODS[key].cls.__name__}")
            _METHODS[key] = spec
        return cls

    return wrap


def _load_builtins() -> None:
    import ivcprune.methods  # noqa: F401  (importing the package registers the built-in methods)


def method_specs() -> list[MethodSpec]:
    """Every registered method once, in registration order."""
    _load_builtins()
    seen, out = set(), []
    for spec in _METHODS.values():
        if spec.name not in seen:
            seen.add(spec.name)
            out.append(spec)
    return out


def method_names() -> list[str]:
    """Every method name the CLI accepts: each method, then "+ivc" where it exists."""
    names = []
    for spec in method_specs():
        names.append(spec.name)
        if spec.plus_ivc:
            names.append(f"{spec.name}+ivc")
    return names


def variant_suffixes() -> dict[str, str]:
    """Method name -> registry variant suffix (``"fastv+ivc" -> "_FastV_IVC"``); IVC-Prune's own is "_IVCP"."""
    out = {}
    for spec in method_specs():
        out[spec.name] = f"_{spec.suffix}"
        if spec.plus_ivc:
            out[f"{spec.name}+ivc"] = f"_{spec.suffix}_IVC"
    return out


def selects_at(name: str) -> str:
    """Where the named method selects: "layer" (one layer K, the ``layer`` argument), "pre-llm" (K = 0) or "stages"
    (a multi-stage schedule); callers pass ``layer`` only to "layer" methods."""
    return make_method(name).selects_at


def make_method(name: str, layer: int | None = None, retention: float | None = None, **options):
    """A method from its name (``ivcp``, ``fastv``, ``fastv+ivc``, ...): the one factory everything shares."""
    _load_builtins()
    key = str(name).strip().lower()
    base, plus_ivc = (key[:-4], True) if key.endswith("+ivc") else (key, False)
    spec = _METHODS.get(base)
    if spec is None or (plus_ivc and not spec.plus_ivc):
        close = difflib.get_close_matches(key, method_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown pruning method {name!r}{hint} known: {', '.join(method_names())}")
    method = spec.cls(layer=layer, retention=retention, **options)
    if not plus_ivc:
        return method
    from ivcprune.methods.with_ivc import WithIVC

    return WithIVC(method)
