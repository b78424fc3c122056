"""The tiny model of every transformers-native family as an invariant ``Case`` (tests/invariants.py).

Shared by the runtime matrix (test_runtime_matrix.py) and the family-specific runtime tests, so each family's
loader, prompt builder and image sizes are written once.
"""

from __future__ import annotations

import pytest
import transformers

from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
import invariants as inv

K = 2  # of 4 decoder layers
STEPS = 4
QWEN_MAX_PIXELS = 64 * 28 * 28  # up to 64 merged tokens per image
QWEN3_MAX_PIXELS = 64 * 32 * 32  # the same with Qwen3-VL's 32-px merged tokens
CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
           "qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
           "llava": "LlavaForConditionalGeneration", "internvl": "InternVLForConditionalGeneration"}
_JSON_PROMPT = "Locate the red circle on the left and output the bbox coordinates in JSON format."
PROMPTS = {
    "qwen2_5_vl": _JSON_PROMPT,
    "qwen2_vl": _JSON_PROMPT,
    "qwen3_vl": _JSON_PROMPT,
    "qwen3_vl_moe": _JSON_PROMPT,
    "llava": "Please provide the bounding box coordinate of the region this sentence describes: the red circle",
    "internvl": "Please provide the bounding box coordinate of the region this sentence describes: "
                "<ref>the red circle</ref>",
}
OTHER_PROMPT = "What is in the picture?"
_MODELS: dict = {}


def load(family: str, attn: str):
    """(model, processor) of a family's tiny checkpoint, loaded once per backend."""
    key = (family, attn)
    if key not in _MODELS:
        extra = {"max_pixels": QWEN3_MAX_PIXELS if family.startswith("qwen3") else QWEN_MAX_PIXELS} \
            if family.startswith("qwen") else {}
        path = tiny_checkpoint(family, **extra)
        model = getattr(transformers, CLASSES[family]).from_pretrained(path, attn_implementation=attn).eval()
        _MODELS[key] = (model, load_processor(path))
    return _MODELS[key]


def _flat(images):
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in _flat(item)]


def internvl_inputs(proc, images, texts):
    """Processor outputs plus image_sizes, the caller-side tiling information."""
    from ivcprune.models.internvl import image_sizes

    out = tiny_inputs("internvl", proc, images, texts)
    flat = _flat(images)
    if flat:
        out["image_sizes"] = image_sizes(flat)
    return out


def _qwen_embed(model, inputs):
    import torch

    ids = inputs["input_ids"]
    vl = model.model
    emb = vl.get_input_embeddings()(ids)
    feats = vl.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True).pooler_output
    feats = torch.cat(list(feats), dim=0)
    emb = emb.masked_scatter((ids == model.config.image_token_id)[..., None].expand_as(emb), feats)
    pos, _ = vl.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                               image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    return emb, pos


def qwen3_deepstack(model, inputs):
    """{decoder layer: (image rows of sample 0, DeepStack features)}: what Qwen3-VL's text model adds after its first
    layers (docs/ALGORITHM.md §4.4), for the oracle."""
    import torch

    rows = torch.nonzero(inputs["input_ids"][0] == model.config.image_token_id).flatten()
    out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    return {i: (rows, torch.cat(list(f), dim=0)) for i, f in enumerate(out.deepstack_features)}


def case(family: str) -> inv.Case:
    if family.startswith("qwen3"):  # 32-px tokens: 10 x 12 and 14 x 8 merged grids
        return inv.Case(family=family, load=lambda attn: load(family, attn),
                        inputs=lambda proc, images, texts: tiny_inputs(family, proc, images, texts),
                        embed=_qwen_embed, image_size=(192, 160), other_size=(128, 224), residual=qwen3_deepstack)
    if family.startswith("qwen"):
        return inv.Case(family=family, load=lambda attn: load(family, attn),
                        inputs=lambda proc, images, texts: tiny_inputs(family, proc, images, texts),
                        embed=_qwen_embed, image_size=(168, 140), other_size=(112, 196))
    if family == "llava":
        return inv.Case(family="llava", load=lambda attn: load("llava", attn),
                        inputs=lambda proc, images, texts: tiny_inputs("llava", proc, images, texts),
                        embed=inv.embed_via_hook, image_size=(112, 84), other_size=(84, 140))
    return inv.Case(family="internvl", load=lambda attn: load("internvl", attn), inputs=internvl_inputs,
                    embed=inv.embed_via_hook, image_size=(112, 84), other_size=(112, 112))


def backend_fixture(the_case: inv.Case, prompt: str):
    """A fixture over eager and sdpa giving (model, processor, inputs of one image of the case's size, seed 1)."""
    @pytest.fixture(params=["eager", "sdpa"])
    def setup(request):
        model, proc = the_case.load(request.param)
        return model, proc, the_case.inputs(proc, make_image(*the_case.image_size, seed=1), prompt)

    return setup
