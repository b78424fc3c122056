"""Prompt building for tiny checkpoints: chat template (images first, then text), left padding."""

from __future__ import annotations


def _per_sample(images, texts):
    """Normalise (images, texts) to parallel lists: one text and a list of images per sample."""
    if isinstance(texts, str):
        texts = [texts]
        images = [images]
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} image entries for {len(texts)} texts")
    norm = []
    for item in images:
        if item is None:
            norm.append([])
        elif isinstance(item, (list, tuple)):
            norm.append(list(item))
        else:
            norm.append([item])
    return norm, list(texts)


def messages_for(n_images: int, text: str) -> list[dict]:
    """One user turn: ``n_images`` image items followed by the text item."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def tiny_inputs(family: str, processor, images, texts):
    """Chat-templated, left-padded ``pt`` processor outputs for one or several samples.

    ``texts`` is a string (one sample; ``images`` a PIL image or a list of them) or a list of
    strings (``images`` then holds one PIL image, a list of images or None per sample).
    """
    per_sample, texts = _per_sample(images, texts)
    prompts = [
        processor.apply_chat_template(messages_for(len(imgs), t), add_generation_prompt=True, tokenize=False)
        for imgs, t in zip(per_sample, texts)
    ]
    flat = [img for imgs in per_sample for img in imgs]
    kwargs = {"text": prompts, "padding": True, "padding_side": "left", "return_tensors": "pt"}
    if flat:
        kwargs["images"] = flat
    return processor(**kwargs)
