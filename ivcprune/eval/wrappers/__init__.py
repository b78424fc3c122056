"""Per-family chat wrappers implementing the harness Model interface (docs/HARNESS.md §1).

``load_model(entry, device)`` takes the wrapper the entry's family object names (``ivcprune.eval.families``). A
family whose wrapper module does not
exist yet fails with a clear "not supported yet" message; a registry entry may also name its own loader as
``loader: module:function`` (custom models, and the scripted fake model of the tests).
"""

from __future__ import annotations

import importlib
import importlib.util

from ivcprune.eval.families import family_names, get_family


class NotSupportedYet(RuntimeError):
    """The registry knows the model but its family has no wrapper in this version."""


def _target(family: str, loader: str | None) -> str:
    if loader:
        return loader
    if family not in family_names():
        raise NotSupportedYet(f"model family {family!r} is not supported (known: {sorted(family_names())})")
    return get_family(family).wrapper


def family_status(family: str, loader: str | None = None) -> tuple[bool, str]:
    """(available, target) without importing heavy modules."""
    try:
        target = _target(family, loader)
    except NotSupportedYet:
        return False, ""
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None, target
    except ModuleNotFoundError:
        return False, target


def load_model(entry, device: str = "cpu"):
    """Build the wrapper for a resolved registry entry (see ``ivcprune.eval.registry.resolve``)."""
    ok, target = family_status(entry.family, entry.get("loader"))
    if not ok:
        raise NotSupportedYet(f"{entry.registry_name}: model family {entry.family!r} is not supported yet in this "
                              f"version of ivcprune (no wrapper {target or 'registered'}). Registered families with a "
                              f"wrapper: {sorted(f for f in family_names() if family_status(f)[0])}")
    module_name, func = target.split(":", 1)
    return getattr(importlib.import_module(module_name), func)(entry, device=device)
