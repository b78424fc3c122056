"""Pruning methods: one small dataclass each, all applied by the same runtime."""

from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.methods.ivcprune import IVCPrune

__all__ = ["PruningMethod", "SampleContext", "IVCPrune", "make_method", "METHOD_NAMES"]

METHOD_NAMES = ("ivcp", "fastv", "fastv+ivc", "random", "random+ivc", "grid", "grid+ivc")


def make_method(name: str, layer: int | None = None, retention: float | None = None, **options) -> PruningMethod:
    """A method from its CLI/registry name (``ivcp``, ``fastv``, ``random``, ``grid``, each with ``+ivc``).

    The one factory the runner, the sweep and the bench share, so a name means the same thing everywhere.
    """
    key = str(name).strip().lower()
    base, plus_ivc = (key[:-4], True) if key.endswith("+ivc") else (key, False)
    if base in ("ivcp", "ivc-prune", "ivcprune") and not plus_ivc:
        return IVCPrune(layer=layer, retention=retention, **options)
    if base == "fastv":
        from ivcprune.methods.fastv import FastV as cls
    elif base == "random":
        from ivcprune.methods.random import RandomPrune as cls
    elif base == "grid":
        from ivcprune.methods.grid import UniformGrid as cls
    else:
        raise ValueError(f"unknown pruning method {name!r}; known: {', '.join(METHOD_NAMES)}")
    inner = cls(layer=layer, retention=retention, **options)
    if not plus_ivc:
        return inner
    from ivcprune.methods.with_ivc import WithIVC

    return WithIVC(inner)
