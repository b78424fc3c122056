"""Pruning methods: one small dataclass each, registered once (``registry``), all applied by the same runtime."""

from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.methods.registry import (make_method, method_names, method_specs, register_method, selects_at,
                                       variant_suffixes)
from ivcprune.methods.ivcp import IVCPrune
from ivcprune.methods import fastv, random, grid, ivc_removed  # noqa: F401,E402  (registration)
from ivcprune.methods import dart, divprune, cdpruner, pdrop  # noqa: F401,E402  (registration)

__all__ = ["PruningMethod", "SampleContext", "IVCPrune", "make_method", "method_names", "method_specs",
           "register_method", "selects_at", "variant_suffixes"]
