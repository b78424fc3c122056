"""Parse the official DeepSeek-VL2 ``config.json`` (tiny, small, base) into plain settings.

The official checkpoints omit many language fields and rely on the defaults of the *official*
``DeepseekV2Config`` (transformers 4.38 remote code), which differ from transformers 5.23's own
defaults (e.g. 30 layers, not 32). So every field is filled from ``OFFICIAL_LM_DEFAULTS`` first and
passed explicitly to the transformers config class chosen for the variant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Defaults of the official DeepseekV2Config (deepseek_vl2/models/configuration_deepseek.py).
OFFICIAL_LM_DEFAULTS: dict[str, Any] = {
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "moe_intermediate_size": 1407,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "n_shared_experts": None,
    "n_routed_experts": None,
    "ep_size": 1,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "greedy",
    "n_group": None,
    "topk_group": None,
    "num_experts_per_tok": None,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 0,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "pad_token_id": None,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_mla": True,
}

# Official VisionEncoderConfig / MlpProjectorConfig defaults for the fields the files leave out.
VISION_DEFAULTS: dict[str, Any] = {
    "model_name": "siglip_so400m_patch14_384",
    "image_size": 384,
    "patch_size": 14,
    "width": 1152,
    "layers": 27,
    "heads": 16,
    "mlp_ratio": 3.7362,
    "global_pool": "map",
    "ignore_head": True,
    "class_token": False,
}
PROJECTOR_DEFAULTS: dict[str, Any] = {
    "projector_type": "downsample_mlp_gelu",
    "input_dim": 1152,
    "n_embed": 2048,
    "depth": 2,
    "mlp_ratio": 1,
    "downsample_ratio": 2,
    "token_pooling": False,
}

# Which transformers class family runs the language model (see docs/DEEPSEEK_VL2.md §6).
LM_KIND_MHA = "mha"  # tiny: DeepseekOcr2TextModel (Llama-style MHA + softmax MoE)
LM_KIND_V2 = "v2"  # small: DeepseekV2ForCausalLM (MLA + softmax greedy MoE)
LM_KIND_V3 = "v3"  # base: DeepseekV3ForCausalLM (MLA + sigmoid noaux_tc MoE)


@dataclass
class VisionSettings:
    """SigLIP tower geometry; ``mlp_hidden`` floors width*mlp_ratio as timm does (1152*3.7362 -> 4304)."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass
class ProjectorSettings:
    input_dim: int
    n_embed: int
    depth: int
    mlp_ratio: int
    downsample_ratio: int


@dataclass
class DeepseekVL2Settings:
    """Top-level settings plus the translated transformers text config (``text_config``)."""

    vision: VisionSettings
    projector: ProjectorSettings
    lm_kind: str
    text_config: Any
    candidate_resolutions: list[tuple[int, int]]
    tile_tag: str = "2D"
    global_view_pos: str = "head"
    torch_dtype: str = "bfloat16"
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def tokens_per_side(self) -> int:
        """h = w = ceil((384 // 14) / 2) = 14 projected tokens per tile side."""
        return math.ceil(self.vision.grid / self.projector.downsample_ratio)


def parse_vision(cfg: dict) -> VisionSettings:
    merged = {**VISION_DEFAULTS, **cfg}
    if merged["class_token"]:
        raise ValueError("vision_config.class_token=true is not used by any DeepSeek-VL2 checkpoint")
    if not merged["ignore_head"]:
        raise ValueError("vision_config.ignore_head must be true: DeepSeek-VL2 uses patch features, not the pool")
    return VisionSettings(
        image_size=int(merged["image_size"]),
        patch_size=int(merged["patch_size"]),
        width=int(merged["width"]),
        layers=int(merged["layers"]),
        heads=int(merged["heads"]),
        mlp_ratio=float(merged["mlp_ratio"]),
    )


def parse_projector(cfg: dict, vision: VisionSettings) -> ProjectorSettings:
    merged = {**PROJECTOR_DEFAULTS, **cfg}
    if merged["projector_type"] != "downsample_mlp_gelu":
        raise ValueError(f"unsupported projector_type {merged['projector_type']!r}")
    if merged["token_pooling"]:
        raise ValueError("projector token_pooling is not used by DeepSeek-VL2 checkpoints")
    if int(merged["input_dim"]) != vision.width:
        raise ValueError(f"projector input_dim {merged['input_dim']} != vision width {vision.width}")
    return ProjectorSettings(
        input_dim=int(merged["input_dim"]),
        n_embed=int(merged["n_embed"]),
        depth=int(merged["depth"]),
        mlp_ratio=int(merged["mlp_ratio"]),
        downsample_ratio=int(merged["downsample_ratio"]),
    )


def fill_language_defaults(cfg: dict) -> dict:
    """The language config with every missing field set to the official default."""
    return {**OFFICIAL_LM_DEFAULTS, **cfg}


def language_kind(lm: dict) -> str:
    if not lm["use_mla"]:
        return LM_KIND_MHA
    if lm["scoring_func"] == "sigmoid" or lm["topk_method"] == "noaux_tc":
        return LM_KIND_V3
    return LM_KIND_V2


def _rope_parameters(lm: dict) -> dict:
    theta = float(lm["rope_theta"])
    scaling = lm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "yarn":
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    out = {"rope_type": "yarn", "rope_theta": theta}
    for key in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if key in scaling:
            out[key] = scaling[key]
    return out


def _check_variant(kind: str, lm: dict) -> None:
    """Refuse settings the chosen transformers class would silently compute differently."""
    if lm["moe_layer_freq"] != 1:
        raise ValueError(f"moe_layer_freq={lm['moe_layer_freq']} is unsupported (all releases use 1)")
    if lm["n_routed_experts"] is None or lm["num_experts_per_tok"] is None:
        raise ValueError("language_config needs n_routed_experts and num_experts_per_tok (MoE LM)")
    if kind in (LM_KIND_MHA, LM_KIND_V2):
        # transformers' V2 / OCR-2 routers always softmax and never renormalise
        if lm["scoring_func"] != "softmax":
            raise ValueError(f"{kind}: scoring_func must be softmax, got {lm['scoring_func']!r}")
        if lm["topk_method"] not in ("greedy", "gready", "group_limited_greedy"):
            raise ValueError(f"{kind}: topk_method {lm['topk_method']!r} unsupported")
        if lm["norm_topk_prob"] and lm["num_experts_per_tok"] > 1:
            raise ValueError(f"{kind}: norm_topk_prob=true with softmax routing is not supported by transformers")
    else:
        if lm["scoring_func"] != "sigmoid" or lm["topk_method"] != "noaux_tc":
            raise ValueError("v3 routing needs scoring_func sigmoid and topk_method noaux_tc")
        if lm["n_group"] is None or lm["topk_group"] is None:
            raise ValueError("noaux_tc routing needs n_group and topk_group")


def _common_lm_fields(lm: dict) -> dict:
    return {
        "vocab_size": lm["vocab_size"],
        "hidden_size": lm["hidden_size"],
        "intermediate_size": lm["intermediate_size"],
        "moe_intermediate_size": lm["moe_intermediate_size"],
        "num_hidden_layers": lm["num_hidden_layers"],
        "num_attention_heads": lm["num_attention_heads"],
        "num_key_value_heads": lm["num_key_value_heads"],
        "n_shared_experts": lm["n_shared_experts"] or 0,
        "n_routed_experts": lm["n_routed_experts"],
        "num_experts_per_tok": lm["num_experts_per_tok"],
        "routed_scaling_factor": float(lm["routed_scaling_factor"]),
        "n_group": lm["n_group"],
        "topk_group": lm["topk_group"],
        "hidden_act": lm["hidden_act"],
        "max_position_embeddings": lm["max_position_embeddings"],
        "initializer_range": lm["initializer_range"],
        "rms_norm_eps": float(lm["rms_norm_eps"]),
        "pad_token_id": lm["pad_token_id"],
        "bos_token_id": lm["bos_token_id"],
        "eos_token_id": lm["eos_token_id"],
        "tie_word_embeddings": False,
        "rope_parameters": _rope_parameters(lm),
        "attention_bias": bool(lm["attention_bias"]),
        "attention_dropout": float(lm["attention_dropout"]),
    }


def build_text_config(language_config: dict):
    """Translate an official ``language_config`` into (kind, transformers config instance)."""
    lm = fill_language_defaults(language_config)
    kind = language_kind(lm)
    _check_variant(kind, lm)
    fields = _common_lm_fields(lm)
    mla = {
        "kv_lora_rank": lm["kv_lora_rank"],
        "q_lora_rank": lm["q_lora_rank"],
        "qk_rope_head_dim": lm["qk_rope_head_dim"],
        "qk_nope_head_dim": lm["qk_nope_head_dim"],
        "v_head_dim": lm["v_head_dim"],
        "first_k_dense_replace": lm["first_k_dense_replace"],
    }
    if kind == LM_KIND_V2:
        from transformers import DeepseekV2Config

        topk = "greedy" if lm["topk_method"] == "gready" else lm["topk_method"]
        return kind, DeepseekV2Config(**fields, **mla, topk_method=topk, norm_topk_prob=False)
    if kind == LM_KIND_V3:
        from transformers import DeepseekV3Config

        return kind, DeepseekV3Config(
            **fields, **mla, norm_topk_prob=bool(lm["norm_topk_prob"]), rope_interleave=True
        )
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2TextConfig

    n_layers = lm["num_hidden_layers"]
    first_dense = lm["first_k_dense_replace"]
    layer_types = ["dense" if i < first_dense else "sparse" for i in range(n_layers)]
    return kind, DeepseekOcr2TextConfig(**fields, topk_method="greedy", mlp_layer_types=layer_types)


def parse_config(cfg: dict) -> DeepseekVL2Settings:
    """Parse the top-level official config dict; unknown layouts raise instead of guessing."""
    if cfg.get("model_type") not in (None, "deepseek_vl_v2"):
        raise ValueError(f"not a DeepSeek-VL2 config: model_type={cfg.get('model_type')!r}")
    tile_tag = cfg.get("tile_tag")
    if tile_tag is None:
        raise ValueError("config.json has no tile_tag (the official default 'tile_tag' is invalid)")
    if tile_tag != "2D":
        raise ValueError(f"tile_tag {tile_tag!r} unsupported: only '2D' is used by the released checkpoints")
    vision = parse_vision(cfg.get("vision_config", {}))
    projector = parse_projector(cfg.get("projector_config", {}), vision)
    kind, text_config = build_text_config(cfg.get("language_config", {}))
    if projector.n_embed != text_config.hidden_size:
        raise ValueError(f"projector n_embed {projector.n_embed} != LM hidden {text_config.hidden_size}")
    cands = [tuple(int(v) for v in wh) for wh in cfg.get("candidate_resolutions", [[384, 384]])]
    return DeepseekVL2Settings(
        vision=vision,
        projector=projector,
        lm_kind=kind,
        text_config=text_config,
        candidate_resolutions=cands,
        tile_tag=tile_tag,
        global_view_pos=cfg.get("global_view_pos", "head"),
        torch_dtype=cfg.get("torch_dtype", "bfloat16"),
        raw=cfg,
    )


def load_config(folder: str | Path) -> DeepseekVL2Settings:
    with open(Path(folder) / "config.json", encoding="utf-8") as fh:
        return parse_config(json.load(fh))
