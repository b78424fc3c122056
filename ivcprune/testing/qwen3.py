"""Tiny Qwen3-VL checkpoints, dense (``qwen3_vl``) and MoE (``qwen3_vl_moe``).

The structure is the released one at toy width: the Qwen special tokens and chat format (Qwen3-VL's template has
no default system turn), patch 16 / merge 2 / temporal 2 (32 px per merged token), a learned, interpolated vision
position table, DeepStack features from ``deepstack_layers`` vision blocks added after as many decoder layers, and
interleaved M-RoPE with the released proportions of ``mrope_section`` ([24, 20, 20] at 64 frequencies). The MoE
flavour replaces every decoder MLP by a routed expert block. Image tokens per image =
(H'/16)*(W'/16)/4 with (H', W') = ``smart_resize(h, w, factor=32, min_pixels, max_pixels)``.
"""

from __future__ import annotations

from ivcprune.models.processor_loading import assemble_processor
from ivcprune.models.qwen3_vl import interleaved_section
from .common import text_kwargs
from .qwen import CHAT_TEMPLATE_FORMAT, QWEN_SPECIALS, build_tokenizer, generation_and_info, qwen_config

# The released Qwen3-VL Instruct template, restricted to what the tiny models use: Qwen2.5-VL's without the default
# system turn (an optional one is rendered as given), one <|vision_start|><|image_pad|><|vision_end|> per image item.
QWEN3_VL_CHAT_TEMPLATE = CHAT_TEMPLATE_FORMAT.replace("<SYSTEM>", "")

DEFAULTS = {
    "min_pixels": 4 * 32 * 32,
    "max_pixels": 16 * 32 * 32,
    "head_dim": 32,  # 16 rotary frequencies: mrope_section [6, 5, 5]
    "vision_layers": 3,
    "deepstack_layers": 3,  # DeepStack features of the first 3 vision blocks, added after decoder layers 0, 1, 2
    "vision_hidden": 32,
    "vision_heads": 2,
    "vision_positions": 64,  # learned 8 x 8 table, bilinearly interpolated to each grid
    "experts": 4,  # MoE only
    "experts_per_token": 2,
    "vocab": 700,
}


def build(family: str, s: dict):
    """Return (model, processor, generation kwargs, info) for 'qwen3_vl' or 'qwen3_vl_moe'."""
    import transformers as tf

    tok = build_tokenizer(s["vocab"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = text_kwargs(
        s,
        len(tok),
        bos=ids["<|endoftext|>"],
        eos=ids["<|im_end|>"],
        pad=ids["<|endoftext|>"],
        theta=5e6,  # the released text rope theta (Qwen2.5-VL: 1e6)
        mrope_section=interleaved_section(s["head_dim"] // 2),
        mrope_interleaved=True,
    )
    text["head_dim"] = s["head_dim"]
    vision = dict(
        depth=s["vision_layers"],
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_hidden"] * 2,
        num_heads=s["vision_heads"],
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=s["hidden"],
        num_position_embeddings=s["vision_positions"],
        deepstack_visual_indexes=list(range(s["deepstack_layers"])),
    )
    if family == "qwen3_vl_moe":
        text.update(num_experts=s["experts"], num_experts_per_tok=s["experts_per_token"],
                    moe_intermediate_size=s["hidden"], decoder_sparse_step=1, mlp_only_layers=[])
        cfg_cls, model_cls = tf.Qwen3VLMoeConfig, tf.Qwen3VLMoeForConditionalGeneration
    else:
        cfg_cls, model_cls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration
    config = qwen_config(cfg_cls, text, vision, ids)
    model = model_cls(config)
    image_processor = tf.Qwen2VLImageProcessorPil(
        min_pixels=s["min_pixels"], max_pixels=s["max_pixels"], patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = assemble_processor(tf.Qwen3VLProcessor, image_processor, tok, QWEN3_VL_CHAT_TEMPLATE)
    return (model, processor) + generation_and_info(ids, image_processor, s, "Qwen3VLVideoProcessor", 16)
