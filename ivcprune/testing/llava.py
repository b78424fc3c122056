"""Tiny LLaVA-1.5 checkpoints (llava-hf layout): CLIP vision tower, Llama LM, LlavaProcessor.

Image tokens per image are fixed: the CLIP processor resizes the short side and centre-crops to
``S x S`` with ``S = sqrt(image_tokens) * 14``; the tower sees ``(S/14)^2`` patches plus CLS, and
``vision_feature_select_strategy="default"`` drops CLS, so tokens = ``image_tokens`` = (S/14)^2.
"""

from __future__ import annotations

import math

from .common import text_kwargs
from .text import train_metaspace_bpe

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# LLaVA-1.5 (vicuna_v1) conversation: "<system> USER: <image>\n{text} ASSISTANT:"; a system
# message, if given, replaces the default; finished assistant turns end with </s>.
LLAVA_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}"
    "{% set rest = messages[1:] %}"
    "{% else %}{% set sys = '" + SYSTEM.replace("'", "\\'") + "' %}{% set rest = messages %}{% endif %}"
    "{{ sys }}"
    "{% for m in rest %}"
    "{% if m['role'] == 'user' %}{{ ' USER: ' }}{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)

DEFAULTS = {
    "image_tokens": 36,
    "vision_layers": 3,
    "vision_hidden": 32,
    "vision_heads": 2,
    "vocab": 900,
}


def build_tokenizer(vocab_size: int = 900):
    """LlamaTokenizer (SentencePiece-style BPE, byte fallback) with <s> prepended, plus <image>, <pad>."""
    from transformers import LlamaTokenizer

    vocab, merges = train_metaspace_bpe(vocab_size, ("<unk>", "<s>", "</s>"))
    vocab.update({"<image>": len(vocab), "<pad>": len(vocab) + 1})  # llava-hf puts them after the LM vocab
    tok = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>", add_bos_token=True, add_eos_token=False)
    tok.add_tokens(["<image>", "<pad>"], special_tokens=True)
    return tok


def crop_size(image_tokens: int) -> int:
    side = math.isqrt(image_tokens)
    if side * side != image_tokens:
        raise ValueError(f"image_tokens must be a perfect square, got {image_tokens}")
    return side * 14


def build(family: str, s: dict):
    """Return (model, processor, generation kwargs, info) for LLaVA-1.5."""
    import transformers as tf

    tok = build_tokenizer(s["vocab"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")}
    size = crop_size(s["image_tokens"])
    vision = tf.CLIPVisionConfig(
        hidden_size=s["vision_hidden"],
        intermediate_size=s["vision_hidden"] * 4,
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        image_size=size,
        patch_size=14,
        projection_dim=s["vision_hidden"],
        hidden_act="quick_gelu",
    )
    text = tf.LlamaConfig(
        **text_kwargs(s, len(tok), bos=ids["<s>"], eos=ids["</s>"], pad=ids["<pad>"], theta=10000.0)
    )
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<image>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=s["image_tokens"],
        tie_word_embeddings=False,
    )
    model = tf.LlavaForConditionalGeneration(config)
    image_processor = tf.CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    gen = {"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"]}
    info = {"image_processor_class": type(image_processor).__name__, "token_ids": ids, "crop_size": size}
    return model, processor, gen, info
