"""Tiny checkpoint factory: every family builds, reloads like a real checkpoint and generates."""

import json

import pytest
import torch

from ivcprune.testing import (
    TINY_FAMILIES,
    load_processor,
    make_image,
    read_record,
    tiny_checkpoint,
    tiny_inputs,
)

QWEN = ("qwen2_5_vl", "qwen2_vl")

# (w, h) -> image tokens, worked out by hand from the default settings (see the family modules).
EXPECTED_TOKENS = {
    # Qwen: smart_resize to multiples of 28 within [4, 16] * 28^2 px, then (H/14)(W/14)/4.
    "qwen2_5_vl": {(112, 84): 12, (56, 140): 10, (448, 448): 16, (300, 200): 12},
    "qwen2_vl": {(112, 84): 12, (56, 140): 10, (448, 448): 16, (300, 200): 12},
    # LLaVA: fixed (84/14)^2 = 36 whatever the input (resize short side + centre crop).
    "llava": {(112, 84): 36, (56, 140): 36, (448, 448): 36},
    # InternVL: 16 per 112-px tile; grid (w_b, h_b), w_b*h_b <= 6, closest aspect; +1 thumbnail if > 1 tile.
    # 112x84 -> 3x2 (+1) = 7 tiles; 56x140 -> 1x3 (+1) = 4; 112x112 -> 1x1 = 1; 448x448 -> 2x2 (+1) = 5.
    "internvl": {(112, 84): 112, (56, 140): 64, (112, 112): 16, (448, 448): 80},
}
PROCESSOR_CLASS = {
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessorPil"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLImageProcessorPil"),
    "llava": ("LlavaProcessor", "CLIPImageProcessorPil"),
    "internvl": ("InternVLProcessor", "GotOcr2ImageProcessorPil"),
}
CHAT_MARKERS = {
    "qwen2_5_vl": [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "<|vision_start|><|image_pad|><|vision_end|>Where is the red square?<|im_end|>\n<|im_start|>assistant\n",
    ],
}
CHAT_MARKERS["qwen2_vl"] = CHAT_MARKERS["qwen2_5_vl"]
CHAT_MARKERS["llava"] = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: <image>\nWhere is the red square? ASSISTANT:"
]
CHAT_MARKERS["internvl"] = [
    "<|im_start|>system\n你是书生·万象，英文名是InternVL",
    "<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nWhere is the red square?<|im_end|>\n<|im_start|>assistant\n",
]
FAMILIES = [f for f in TINY_FAMILIES if f in EXPECTED_TOKENS]

_loaded = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads and suffer badly on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(family, attn="sdpa"):
    """Model + processor from the cached folder, through the same calls a real checkpoint uses."""
    from transformers import AutoModelForImageTextToText

    key = (family, attn)
    if key not in _loaded:
        path = tiny_checkpoint(family)
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn).eval()
        _loaded[key] = (path, model, load_processor(path))
    return _loaded[key]


def image_token_id(model):
    return model.config.image_token_id if hasattr(model.config, "image_token_id") else model.config.image_token_index


@pytest.mark.parametrize("family", FAMILIES)
def test_build_and_record(family):
    path, model, proc = load(family)
    rec = read_record(path)
    assert rec["family"] == family and rec["image_processor_class"] == PROCESSOR_CLASS[family][1]
    assert (type(proc).__name__, type(proc.image_processor).__name__) == PROCESSOR_CLASS[family]
    assert model.dtype == torch.float32
    assert model.config.text_config.num_hidden_layers == 4
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"][0] == type(model).__name__
    # tokenizer and config agree on every special id
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids(proc.image_token) == image_token_id(model)
    assert len(tok) <= model.config.text_config.vocab_size < 2000
    if family == "llava":  # no video processor involved: the stock loader works as is
        from transformers import AutoProcessor

        assert type(AutoProcessor.from_pretrained(path)).__name__ == "LlavaProcessor"
    # cache: same settings -> same folder, different settings -> different folder
    assert tiny_checkpoint(family) == path
    assert tiny_checkpoint(family, layers=2) != path


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_counts(family):
    _, model, proc = load(family)
    tid = image_token_id(model)
    for (w, h), n in EXPECTED_TOKENS[family].items():
        inp = tiny_inputs(family, proc, make_image(w, h, 0), "Where is the red square?")
        ids = inp["input_ids"][0]
        assert int((ids == tid).sum()) == n, (w, h)
        span = (ids == tid).nonzero()[:, 0]
        assert span[-1] - span[0] + 1 == n  # one contiguous run
        if family == "internvl":  # <img> ... </img> hug the run
            assert ids[span[0] - 1] == proc.start_image_token_id and ids[span[-1] + 1] == proc.end_image_token_id
        if family in QWEN:
            assert ids[span[0] - 1] == model.config.vision_start_token_id
            assert ids[span[-1] + 1] == model.config.vision_end_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template(family):
    _, _, proc = load(family)
    from ivcprune.testing import messages_for

    text = proc.apply_chat_template(messages_for(1, "Where is the red square?"), add_generation_prompt=True, tokenize=False)
    for marker in CHAT_MARKERS[family]:
        assert marker in text


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_eager_sdpa_batch(family):
    img_a, img_b = make_image(112, 84, 1), make_image(56, 140, 2)
    outs = {}
    for attn in ("eager", "sdpa"):
        _, model, proc = load(family, attn)
        single = tiny_inputs(family, proc, img_a, "Where is the red square?")
        with torch.no_grad():
            logits = model(**single).logits[0, -1]
        assert torch.isfinite(logits).all() and logits.std() > 0.5  # not near-uniform
        gen = model.generate(**single, max_new_tokens=5, do_sample=False)
        new_single = gen[0, single["input_ids"].shape[1] :].tolist()
        assert len(new_single) == 5 and len(set(new_single)) > 1
        batch = tiny_inputs(family, proc, [img_b, img_a], ["Describe the picture.", "Where is the red square?"])
        assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()
        gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
        new_batch = gen[:, batch["input_ids"].shape[1] :].tolist()
        # the second (left-padded or not) row is the single prompt: padding must not change it
        assert new_batch[1] == new_single
        outs[attn] = (new_single, new_batch)
    assert outs["eager"] == outs["sdpa"]


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_in_one_prompt(family):
    _, model, proc = load(family)
    inp = tiny_inputs(family, proc, [[make_image(112, 84, 1), make_image(56, 140, 2)]], ["Compare them."])
    counts = EXPECTED_TOKENS[family]
    assert int((inp["input_ids"] == image_token_id(model)).sum()) == counts[(112, 84)] + counts[(56, 140)]
    out = model.generate(**inp, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inp["input_ids"].shape[1] + 5


def test_make_image_deterministic():
    a, b, c = make_image(64, 48, 3), make_image(64, 48, 3), make_image(64, 48, 4)
    assert a.mode == "RGB" and a.size == (64, 48)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    assert len(a.getcolors(1 << 16)) > 20  # structure, not a flat fill


@pytest.mark.parametrize("family", [f for f in QWEN if f in FAMILIES])
def test_qwen_mrope_positions(family):
    _, model, proc = load(family)
    inp = tiny_inputs(family, proc, [[make_image(112, 84, 1), make_image(56, 140, 2)]], ["Compare them."])
    assert "mm_token_type_ids" in inp
    seen = {}

    def grab(_mod, _args, kwargs):
        seen.setdefault("pos", kwargs.get("position_ids"))

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = model.generate(**inp, max_new_tokens=5, do_sample=False)
    finally:
        handle.remove()
    assert out.shape[1] == inp["input_ids"].shape[1] + 5
    pos = seen["pos"]
    # (t, h, w) M-RoPE, not 1-D; generate() prepends a row of plain text positions (4 rows)
    assert pos.dim() == 3 and pos.shape[0] in (3, 4)
    pos = pos[-3:]
    img = (inp["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
    first = pos[:, 0, img[:12]]  # 112x84 -> 3 x 4 merged grid
    assert (first[0] == first[0, 0]).all()
    assert first[1].tolist() == [first[1, 0].item() + r for r in range(3) for _ in range(4)]
    assert first[2].tolist() == [first[2, 0].item() + c for _ in range(3) for c in range(4)]


@pytest.mark.parametrize(
    "family, overrides, size, expected",
    [
        ("qwen2_5_vl", {"max_pixels": 64 * 28 * 28}, (448, 448), 64),  # 448^2 fits: 32*32/4
        ("llava", {"image_tokens": 64}, (112, 84), 64),  # 112-px crop, 8x8 patches
        ("internvl", {"max_tiles": 2}, (300, 100), 48),  # 2x1 grid + thumbnail = 3 tiles
    ],
)
def test_overrides_change_token_counts(family, overrides, size, expected):
    from transformers import AutoConfig

    path = tiny_checkpoint(family, layers=2, **overrides)
    assert AutoConfig.from_pretrained(path).text_config.num_hidden_layers == 2
    assert read_record(path)["settings"].items() >= overrides.items()
    proc = load_processor(path)
    inp = tiny_inputs(family, proc, make_image(*size, 0), "Where?")
    tid = proc.image_token_id
    assert int((inp["input_ids"] == tid).sum()) == expected


def test_unknown_override_is_rejected():
    with pytest.raises(TypeError, match="image_tokens"):
        tiny_checkpoint("qwen2_vl", image_tokens=64)
    with pytest.raises(ValueError, match="unknown tiny family"):
        tiny_checkpoint("blip")
