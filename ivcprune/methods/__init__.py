"""Pruning methods: one small dataclass each, all applied by the same runtime."""

from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.methods.ivcprune import IVCPrune

__all__ = ["PruningMethod", "SampleContext", "IVCPrune"]
