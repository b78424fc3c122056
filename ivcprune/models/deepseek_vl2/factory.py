"""Tiny random DeepSeek-VL2 checkpoints in the official layout (docs/DEEPSEEK_VL2.md §8), for offline tests.

``make_tiny_deepseek_vl2(folder, flavour)`` writes ``config.json`` in the official schema (language
config with fields deliberately left out, so the official-default fill is exercised), bf16 sharded
safetensors under the official keys (per-expert tensors, ``view_seperator``, the unused
``attn_pool``), a byte-level BPE ``tokenizer.json`` declared as ``LlamaTokenizerFast`` (the 5.23
pitfall) and ``processor_config.json``. Flavours: "tiny" (MHA + softmax MoE), "small" (MLA + softmax),
"base" (MLA + sigmoid/noaux_tc with correction bias).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .configuration import parse_config
from .language import unfuse_tensor
from .processing import (
    BOS_TOKEN, DEFAULT_CANDIDATES, EOS_TOKEN, GROUNDING_TOKENS, IMAGE_TOKEN, PAD_TOKEN, ROLE_TOKENS,
)

FLAVOURS = ("tiny", "small", "base")
HIDDEN = 64

_VISION = {"model_type": "vision", "model_name": "siglip_so400m_patch14_384", "width": 48, "layers": 2,
           "heads": 4, "mlp_ratio": 2.0, "patch_size": 14, "image_size": 384}

# Shared by every flavour; rope_theta and rms_norm_eps are left out on purpose (official defaults).
_LM_COMMON = {
    "model_type": "deepseek_v2", "hidden_size": HIDDEN, "intermediate_size": 128, "moe_intermediate_size": 32,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "first_k_dense_replace": 1,
    "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2, "moe_layer_freq": 1,
    "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "lm_head": True, "rm_head": False,
    "architectures": ["DeepseekV2ForCausalLM"], "auto_map": {}, "ep_size": 1,
}
_MLA = {"kv_lora_rank": 32, "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}
_FLAVOUR_LM = {
    "tiny": {"use_mla": False, "kv_lora_rank": None, "q_lora_rank": None, "qk_nope_head_dim": 0,
             "qk_rope_head_dim": 0, "v_head_dim": 0, "topk_method": "greedy", "scoring_func": "softmax",
             "norm_topk_prob": False, "routed_scaling_factor": 1.0},
    "small": {"use_mla": True, **_MLA, "topk_method": "greedy", "scoring_func": "softmax",
              "norm_topk_prob": False, "routed_scaling_factor": 1.0},
    # use_mla is left out too: the official default (true) must apply
    "base": {**_MLA, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
             "routed_scaling_factor": 2.0, "n_group": 1, "topk_group": 1},
}


def _corpus() -> list[str]:
    """A few hundred short lines of prompt-like English with digits, for a tiny BPE."""
    things = ["cat", "dog", "car", "person", "tree", "cup", "sign", "horse"]
    colours = ["red", "blue", "green", "white", "black"]
    lines = [f"Locate the {c} {t} in the given image. It is at [[{i * 37 % 999}, {i * 91 % 999}, "
             f"{(i * 53 + 200) % 999}, {(i * 17 + 300) % 999}]]."
             for i, (c, t) in enumerate(itertools.product(colours, things))]
    lines += ["What is shown in this picture? Answer with a single word.",
              "Describe the scene in detail. Is there a person? Yes or no.",
              "Which option is correct? A. left B. right C. top D. bottom"]
    return lines


def build_tokenizer(folder: Path) -> int:
    """Write tokenizer.json + tokenizer_config.json; returns the vocabulary size (added tokens included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([IMAGE_TOKEN, *GROUNDING_TOKENS, *ROLE_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "model_max_length": 16384, "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False), "utf-8")
    return tok.get_vocab_size(with_added_tokens=True)


def official_config(flavour: str, vocab_size: int, candidates=None) -> dict:
    """config.json dict in the official schema for a tiny flavour."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    language = {**_LM_COMMON, **_FLAVOUR_LM[flavour], "vocab_size": vocab_size,
                "bos_token_id": 0, "eos_token_id": 1}
    return {
        "model_type": "deepseek_vl_v2", "architectures": ["DeepseekVLV2ForCausalLM"],
        "tile_tag": "2D", "global_view_pos": "head",
        "candidate_resolutions": [list(c) for c in (candidates or DEFAULT_CANDIDATES)],
        "torch_dtype": "bfloat16", "transformers_version": "4.38.2",
        "vision_config": dict(_VISION),
        "projector_config": {"model_type": "mlp_projector", "n_embed": HIDDEN, "input_dim": _VISION["width"]},
        "language_config": language,
    }


def _random_official_state(cfg: dict, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Seeded normal weights (norm weights 1, norm biases 0) under the official checkpoint keys."""
    from .modeling import DeepseekVL2ForCausalLM

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DeepseekVL2ForCausalLM(parse_config(cfg)).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        module, _, leaf = key.rpartition(".")
        if "norm" in module.rpartition(".")[2]:
            value = torch.ones(shapes[key]) if leaf == "weight" else torch.zeros(shapes[key])
        else:
            value = torch.randn(shapes[key], generator=gen) * std
        state.update(unfuse_tensor(key, value.to(torch.bfloat16)))
    return state


def _save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> None:
    keys = sorted(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), "utf-8")


def make_tiny_deepseek_vl2(folder: str | Path, flavour: str = "tiny", seed: int = 0, candidates=None) -> Path:
    """Write a complete tiny checkpoint folder (config, weights, tokenizer, processor config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(folder)
    vocab_size = -(-vocab // 16) * 16
    cfg = official_config(flavour, vocab_size, candidates)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), "utf-8")
    proc = {
        "processor_class": "DeepseekVLV2Processor", "candidate_resolutions": cfg["candidate_resolutions"],
        "patch_size": 14, "downsample_ratio": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "normalize": True, "image_token": IMAGE_TOKEN, "pad_token": PAD_TOKEN, "sft_format": "deepseek",
        "mask_prompt": False, "ignore_id": -100, "add_special_token": False,
    }
    (folder / "processor_config.json").write_text(json.dumps(proc, indent=2, ensure_ascii=False), "utf-8")
    _save_sharded(_random_official_state(cfg, seed), folder)
    return folder
