"""Tiny InternVL checkpoints in the native ``-hf`` layout: InternViT, Qwen2 LM, InternVLProcessor.

Tiles are ``tile x tile`` pixels (default 112) cut by the GotOcr2 PIL image processor: the
canvas (w_b, h_b) with w_b*h_b <= max_tiles closest to the image aspect ratio, plus a thumbnail
when there is more than one tile.  The ViT sees (tile/14)^2 patches per tile; pixel shuffle with
``downsample_ratio`` 0.5 keeps a quarter, so ``image_seq_length`` = (tile/28)^2 = 16 tokens per
tile and an image costs 16*n ``<IMG_CONTEXT>`` tokens between ``<img>`` and ``</img>``.
"""

from __future__ import annotations

from .common import text_kwargs
from ivcprune.models.processor_loading import assemble_processor
from .qwen import build_tokenizer as qwen_tokenizer

IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>")
NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# The internvl2_5 conversation (ChatML with InternVL's default system message). Each image item
# renders as "<IMG_CONTEXT>\n", which the processor expands to <img><IMG_CONTEXT>*16n</img>, i.e.
# exactly the original "<image>\n" after InternVL's own replacement.
INTERNVL_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}"
    "{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif c['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEFAULTS = {
    "max_tiles": 6,
    "tile": 112,
    "vision_layers": 2,
    "vision_hidden": 32,
    "vision_heads": 2,
    "vocab": 700,
}


def tokens_per_tile(tile: int) -> int:
    if tile % 28:
        raise ValueError(f"tile must be a multiple of 28 (patch 14, pixel shuffle 2), got {tile}")
    return (tile // 28) ** 2


def build(family: str, s: dict):
    """Return (model, processor, generation kwargs, info) for InternVL (2.5 / 3, -hf layout)."""
    import transformers as tf

    tok = qwen_tokenizer(s["vocab"], extra=IMAGE_TOKENS, named=NAMED)
    names = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in names}
    per_tile = tokens_per_tile(s["tile"])
    vision = tf.InternVLVisionConfig(
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_hidden"] * 4,
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        image_size=[s["tile"], s["tile"]],
        patch_size=[14, 14],
        attention_bias=True,
        use_qk_norm=False,
        norm_type="layer_norm",
        use_mean_pooling=False,
        use_absolute_position_embeddings=True,
        layer_scale_init_value=0.1,
    )
    eot, eos = ids["<|endoftext|>"], ids["<|im_end|>"]
    text = tf.Qwen2Config(**text_kwargs(s, len(tok), bos=eot, eos=eos, pad=eot, theta=1e6))
    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=per_tile,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = tf.InternVLForConditionalGeneration(config)
    image_processor = tf.GotOcr2ImageProcessorPil(
        size={"height": s["tile"], "width": s["tile"]},
        crop_to_patches=True,
        min_patches=1,
        max_patches=s["max_tiles"],
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = assemble_processor(
        tf.InternVLProcessor, image_processor, tok, INTERNVL_CHAT_TEMPLATE, image_seq_length=per_tile
    )
    gen = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
    }
    info = {
        "image_processor_class": type(image_processor).__name__,
        "token_ids": ids,
        "tokens_per_tile": per_tile,
        "video_config": {
            "video_processor_type": "InternVLVideoProcessor",
            "size": {"height": s["tile"], "width": s["tile"]},
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
    }
    return model, processor, gen, info


def tile_grid(w: int, h: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """(w_b, h_b) the processor picks for a w x h image, via its own canvas-selection routine."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    return get_optimal_tiled_canvas((h, w), (tile, tile), 1, max_tiles)


def image_tokens(w: int, h: int, tile: int = 112, max_tiles: int = 6) -> int:
    """<IMG_CONTEXT> tokens for a w x h image: 16 per tile, thumbnail added when tiles > 1."""
    gw, gh = tile_grid(w, h, tile, max_tiles)
    n = gw * gh + (1 if gw * gh > 1 else 0)
    return n * tokens_per_tile(tile)
