"""IVC-Prune: the method, its per-family defaults and policies, and the IVC sets "X + IVC" reuses."""

from ivcprune.methods.ivcp.defaults import FAMILY_DEFAULTS, IVCPDefaults, family_defaults
from ivcprune.methods.ivcp.ivc import ivc_sets
from ivcprune.methods.ivcp.method import IVCPrune

__all__ = ["IVCPrune", "IVCPDefaults", "FAMILY_DEFAULTS", "family_defaults", "ivc_sets"]
