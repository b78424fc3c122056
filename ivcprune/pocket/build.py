"""The pocket model's architecture, processor and chat template (stock Qwen2.5-VL classes, nothing of ours).

The chat template renders the real Qwen2.5-VL format (default system turn, ``<|im_start|>``/``<|im_end|>``,
``<|vision_start|><|image_pad|><|vision_end|>``) with one change: in a user turn that holds an image, the turn's
text is written once *before* the image as well as in its place after it. The image tokens can then attend to the
referring expression (a causal model cannot otherwise look ahead), which is what made referring trainable in a
small model (POCKET_EXPERIMENTS.md, experiment 4); the copy after the image keeps the expression among
IVC-Prune's text queries (they start two tokens after the image). Prompts, parser and defaults of the registry's
Qwen2.5-VL entries apply unchanged.
"""

from __future__ import annotations

from ivcprune.testing.qwen import QWEN_CHAT_TEMPLATE

_LOOP = "{% else %}{% for c in m['content'] %}"
# Before a user turn's content: when it holds an image, all of its text items once (then everything in order).
_TEXT_FIRST = (
    "{% set has_img = namespace(v=false) %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' or 'image' in c %}{% set has_img.v = true %}"
    "{% endif %}{% endfor %}"
    "{% if has_img.v %}{% for c in m['content'] %}"
    "{% if not (c['type'] == 'image' or 'image' in c) and 'text' in c %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
assert QWEN_CHAT_TEMPLATE.count(_LOOP) == 1
POCKET_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(_LOOP, "{% else %}" + _TEXT_FIRST + "{% for c in m['content'] %}")

ARCH = {
    "layers": 6, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 512, "rope_theta": 4.0,
    "mrope_section": [8, 4, 4], "vision_depth": 2, "vision_hidden": 64, "vision_heads": 2, "vision_mlp": 128,
    "min_pixels": 4 * 28 * 28, "max_pixels": 12845056, "vocab": 700,
}


def build(seed: int = 0, arch: dict | None = None):
    """(model, processor, generation kwargs) of a freshly initialised pocket model."""
    import torch
    import transformers as tf

    from ivcprune.models.processor_loading import assemble_processor
    from ivcprune.testing.qwen import QWEN_SPECIALS, build_tokenizer

    a = dict(ARCH, **(arch or {}))
    tok = build_tokenizer(a["vocab"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = {
        "vocab_size": len(tok), "hidden_size": a["hidden"], "intermediate_size": a["intermediate"],
        "num_hidden_layers": a["layers"], "num_attention_heads": a["heads"], "num_key_value_heads": a["kv_heads"],
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": a["rope_theta"], "mrope_section": a["mrope_section"]},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision = {"depth": a["vision_depth"], "hidden_size": a["vision_hidden"], "intermediate_size": a["vision_mlp"],
              "num_heads": a["vision_heads"], "out_hidden_size": a["hidden"], "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [a["vision_depth"] - 1]}
    config = tf.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = tf.Qwen2_5_VLForConditionalGeneration(config).float()
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=a["min_pixels"], max_pixels=a["max_pixels"],
                                                  patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = assemble_processor(tf.Qwen2_5_VLProcessor, image_processor, tok, POCKET_CHAT_TEMPLATE)
    gen = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
           "pad_token_id": ids["<|endoftext|>"]}
    return model, processor, gen


def messages(expression_prompt: str) -> list[dict]:
    """The harness's user turn: the image, then the grounding text (``grounding_text(expr, 'qwen2_5_vl')``)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": expression_prompt}]}]
