"""Tiny Qwen2-VL / Qwen2.5-VL checkpoints: local BPE tokenizer, PIL image processor, small towers.

Token ids are small (specials follow the ~700 BPE entries) but the *structure* is the real one:
the same special tokens, the same chat format, patch 14 / merge 2 / temporal 2 vision layout, so
image-token counts follow the real formula  tokens = (H'/14)*(W'/14)/4  with (H', W') from
``smart_resize(h, w, factor=28, min_pixels, max_pixels)``.
"""

from __future__ import annotations

from .common import text_kwargs
from ivcprune.models.processor_loading import assemble_processor
from ivcprune.models.qwen2_vl import mrope_section
from .text import train_bytelevel_bpe

# Order mirrors the real release (ids 151643...), here appended after the BPE vocabulary.
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Renders the same text as the released Qwen2-VL / Qwen2.5-VL templates: default system turn,
# one <|vision_start|><|image_pad|><|vision_end|> per image item, items in message order.
# All literal text goes through {{ '...' }} so Jinja's trim_blocks/lstrip_blocks cannot eat newlines.
# "<SYSTEM>" marks where the default system turn goes (Qwen2/2.5-VL); Qwen3-VL has none there.
DEFAULT_SYSTEM_TURN = (
    "{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
)
CHAT_TEMPLATE_FORMAT = (
    "{% set n_img = namespace(v=0) %}{% set n_vid = namespace(v=0) %}"
    "{% for m in messages %}"
    "<SYSTEM>"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}"
    "{% set n_img.v = n_img.v + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + n_img.v|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'video' or 'video' in c %}"
    "{% set n_vid.v = n_vid.v + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + n_vid.v|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in c %}{{ c['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE_FORMAT.replace("<SYSTEM>", DEFAULT_SYSTEM_TURN)

DEFAULTS = {
    "min_pixels": 4 * 28 * 28,
    "max_pixels": 16 * 28 * 28,
    "vision_layers": 2,
    "vision_hidden": 32,
    "vision_heads": 2,
    "vocab": 700,
}


def build_tokenizer(vocab_size: int = 700, extra: tuple[str, ...] = (), named: dict | None = None):
    """Qwen2Tokenizer over a locally trained byte-level BPE plus the Qwen special tokens.

    ``extra`` appends further special tokens (InternVL's ``<img>`` ...); ``named`` registers some
    of them as tokenizer attributes (``tokenizer.context_image_token`` and ``..._id``).
    """
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bytelevel_bpe(vocab_size)
    specials = QWEN_SPECIALS + [t for t in extra if t not in QWEN_SPECIALS]
    # specials get consecutive ids right after the BPE entries, in the released order
    vocab.update({t: len(vocab) + i for i, t in enumerate(specials)})
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=dict(named) if named else None,
    )
    tok.add_tokens(specials, special_tokens=True)
    return tok


def build(family: str, s: dict):
    """Return (model, processor, generation kwargs, info) for 'qwen2_vl' or 'qwen2_5_vl' from the settings dict ``s``."""
    import transformers as tf

    tok = build_tokenizer(s["vocab"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = text_kwargs(
        s,
        len(tok),  # no padded rows: every id the model can emit decodes
        bos=ids["<|endoftext|>"],
        eos=ids["<|im_end|>"],
        pad=ids["<|endoftext|>"],
        theta=1e6,
        mrope_section=mrope_section(s["hidden"] // s["heads"]),
    )
    vis_common = dict(
        depth=s["vision_layers"],
        num_heads=s["vision_heads"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if family == "qwen2_5_vl":
        vision = dict(
            vis_common,
            hidden_size=s["vision_hidden"],
            intermediate_size=s["vision_hidden"] * 2,
            out_hidden_size=s["hidden"],
            window_size=112,
            # last vision block uses full attention, the others windowed, as in the release
            fullatt_block_indexes=[s["vision_layers"] - 1],
        )
        cfg_cls, model_cls, proc_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    else:
        vision = dict(vis_common, embed_dim=s["vision_hidden"], hidden_size=s["hidden"], mlp_ratio=2)
        cfg_cls, model_cls, proc_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    config = qwen_config(cfg_cls, text, vision, ids, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"])
    model = model_cls(config)
    image_processor = tf.Qwen2VLImageProcessorPil(
        min_pixels=s["min_pixels"], max_pixels=s["max_pixels"], patch_size=14, merge_size=2, temporal_patch_size=2
    )
    # No video processor object: Qwen's needs torchvision and the project feeds still images only.
    processor = assemble_processor(proc_cls, image_processor, tok, QWEN_CHAT_TEMPLATE)
    return (model, processor) + generation_and_info(ids, image_processor, s, "Qwen2VLVideoProcessor", 14)


def qwen_config(cfg_cls, text: dict, vision: dict, ids: dict, **extra):
    """The composite config of any Qwen-VL generation: text and vision parts plus the vision special-token ids."""
    return cfg_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **extra,
    )


def generation_and_info(ids: dict, image_processor, s: dict, video_processor: str, patch: int) -> tuple[dict, dict]:
    """Generation kwargs and the factory record of a Qwen-family checkpoint (any generation, patch 14 or 16)."""
    gen = dict(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    info = {
        "image_processor_class": type(image_processor).__name__,
        "token_ids": ids,
        "video_config": {
            "video_processor_type": video_processor,
            "size": {"shortest_edge": s["min_pixels"], "longest_edge": s["max_pixels"]},
            "patch_size": patch,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
    }
    return gen, info


def image_tokens(h: int, w: int, min_pixels: int, max_pixels: int, patch: int = 14) -> int:
    """Image tokens for an h x w image: the processor's resize rule (factor 2 * patch), restated for checks;
    patch 14 for Qwen2/2.5-VL, 16 for Qwen3-VL."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rh, rw = smart_resize(h, w, factor=2 * patch, min_pixels=min_pixels, max_pixels=max_pixels)
    return (rh // patch) * (rw // patch) // 4
