"""Model-family adapters; importing this package registers the built-in ones."""

from ivcprune.models.base import FamilyAdapter, TokenGroup, get_adapter, register_adapter
from ivcprune.models import qwen2_vl, qwen3_vl  # noqa: F401
from ivcprune.models import internvl, llava  # noqa: F401


def _lazy(target: str):
    """Stand-in adapter factory that imports ``module:Class`` on first use (keeps ``import ivcprune`` light)."""

    def build(model):
        import importlib

        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)(model)

    return build


# the DeepSeek-VL2 package pulls in its model, processor and PIL: import it only when such a model is pruned
register_adapter("DeepseekVL2ForCausalLM")(_lazy("ivcprune.models.deepseek_vl2.adapter:DeepseekVL2Adapter"))

__all__ = ["FamilyAdapter", "TokenGroup", "get_adapter", "register_adapter"]
