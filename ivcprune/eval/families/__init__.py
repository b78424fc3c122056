"""Harness family objects: one module per family, each exporting ``FAMILY`` (docs/ARCHITECTURE.md §6).

A new family is one module here plus its name in ``MODULES``; ``get_family`` imports it on first use.
"""

from __future__ import annotations

import importlib

from ivcprune.eval.families.base import HarnessFamily

MODULES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "internvl", "deepseek_vl2", "llava")


def family_names() -> tuple[str, ...]:
    return MODULES


def get_family(name: str) -> HarnessFamily:
    """The family object of ``name``; a ValueError naming the known families otherwise."""
    if name not in MODULES:
        raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(MODULES)}")
    return importlib.import_module(f"ivcprune.eval.families.{name}").FAMILY


__all__ = ["HarnessFamily", "family_names", "get_family"]
