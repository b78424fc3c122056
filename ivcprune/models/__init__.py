"""Model-family adapters; importing this package registers the built-in ones."""

from ivcprune.models.base import FamilyAdapter, FamilySettings, get_adapter, register_adapter
from ivcprune.models import qwen2_vl  # noqa: F401
from ivcprune.models import internvl, llava  # noqa: F401

__all__ = ["FamilyAdapter", "FamilySettings", "get_adapter", "register_adapter"]
