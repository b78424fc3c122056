"""The DeepSeek-VL2 language model, built from transformers 5.23's own DeepSeek classes.

small -> ``DeepseekV2ForCausalLM`` (MLA + softmax greedy MoE), base -> ``DeepseekV3ForCausalLM``
(MLA + sigmoid/noaux_tc MoE with ``e_score_correction_bias``), tiny -> ``DeepseekOcr2TextModel``
(Llama-style MHA + the same softmax MoE) plus an untied ``lm_head``, which is the only piece we
write ourselves. All three expose ``.model.layers[i]`` decoder layers called with
``position_embeddings``, ``attention_mask``, ``position_ids`` and ``past_key_values`` like every
other transformers decoder, so pruning hooks are shared across families.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import LM_KIND_MHA, LM_KIND_V2, LM_KIND_V3

# Checkpoint stores experts one by one; transformers 5.23 holds them fused per layer.
_FUSED_EXPERTS = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<name>gate_up_proj|down_proj)$")


class MHACausalLM(nn.Module):
    """``DeepseekOcr2TextModel`` + untied head, laid out as ``model`` / ``lm_head`` like the checkpoint."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextModel

        self.config = config
        self.model = DeepseekOcr2TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, logits_to_keep: int = 0, **kwargs):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), past_key_values=out.past_key_values)


def build_language_model(kind: str, config) -> nn.Module:
    if kind == LM_KIND_V2:
        from transformers import DeepseekV2ForCausalLM

        return DeepseekV2ForCausalLM(config)
    if kind == LM_KIND_V3:
        from transformers import DeepseekV3ForCausalLM

        return DeepseekV3ForCausalLM(config)
    if kind == LM_KIND_MHA:
        return MHACausalLM(config)
    raise ValueError(f"unknown language model kind {kind!r}")


def checkpoint_names(module_key: str, num_experts: int) -> list[str]:
    """Official checkpoint keys that make up one module state-dict entry (per-expert for fused tensors)."""
    m = _FUSED_EXPERTS.match(module_key)
    if not m:
        return [module_key]
    prefix = m["prefix"]
    parts = ("gate_proj", "up_proj") if m["name"] == "gate_up_proj" else ("down_proj",)
    return [f"{prefix}.{j}.{p}.weight" for j in range(num_experts) for p in parts]


def fuse_tensor(module_key: str, shard: dict[str, torch.Tensor], num_experts: int) -> torch.Tensor:
    """Build one module tensor from checkpoint tensors: stack per-expert [gate; up] or down."""
    m = _FUSED_EXPERTS.match(module_key)
    if not m:
        return shard[module_key]
    prefix = m["prefix"]
    if m["name"] == "gate_up_proj":
        rows = [
            torch.cat([shard[f"{prefix}.{j}.gate_proj.weight"], shard[f"{prefix}.{j}.up_proj.weight"]], 0)
            for j in range(num_experts)
        ]
    else:
        rows = [shard[f"{prefix}.{j}.down_proj.weight"] for j in range(num_experts)]
    return torch.stack(rows, 0)


def unfuse_tensor(module_key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of ``fuse_tensor``: module tensor -> {checkpoint key: tensor} (used by the factory)."""
    m = _FUSED_EXPERTS.match(module_key)
    if not m:
        return {module_key: tensor}
    prefix, out = m["prefix"], {}
    for j in range(tensor.shape[0]):
        if m["name"] == "gate_up_proj":
            gate, up = tensor[j].chunk(2, dim=0)
            out[f"{prefix}.{j}.gate_proj.weight"] = gate.contiguous()
            out[f"{prefix}.{j}.up_proj.weight"] = up.contiguous()
        else:
            out[f"{prefix}.{j}.down_proj.weight"] = tensor[j].contiguous()
    return out
