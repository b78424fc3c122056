"""LLaVA-1.5 and InternVL wrappers on tiny random checkpoints: registry names, prompts, padding, tiling, stats."""

from __future__ import annotations

import pytest

from ivcprune.eval.datasets.grounding import grounding_text, to_gt_frame
from ivcprune.eval.registry import make_method, resolve
from ivcprune.eval.wrappers import family_status, load_model
from ivcprune.eval.wrappers.internvl import InternVLWrapper
from ivcprune.eval.wrappers.llava import LlavaWrapper, pad_to_square
from ivcprune.testing import make_image, tiny_checkpoint

STAT_KEYS = {"image_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept", "prefill_ms", "decode_ms", "new_tokens"}
NAMES = {"llava_v1.5_7b_IVCP": "llava", "llava_v1.5_7b": "llava", "InternVL3-8B_ivcp": "internvl",
         "InternVL3-8B": "internvl", "InternVL2_5-8B_ivcp": "internvl", "InternVL2_5-8B": "internvl"}


def _model(name: str, **kw):
    sets = {"generation.max_new_tokens": 5, **kw.pop("sets", {})}
    return load_model(resolve(name, model_path=str(tiny_checkpoint(NAMES[name])), sets=sets, **kw))


def test_registry_names_resolve_to_these_wrappers():
    for name, family in NAMES.items():
        entry = resolve(name, model_path="/nowhere")
        assert entry.family == family and family_status(family)[0]
        pruned = name.lower().endswith("_ivcp")
        assert (entry.pruning is not None) == pruned
    # LLaVA's registry entry leaves retention unset: the UNION policy, not a budget
    method = make_method(resolve("llava_v1.5_7b_IVCP", model_path="/x").pruning)
    assert method.retention is None and method.layer == 16
    assert make_method(resolve("InternVL3-8B_ivcp", model_path="/x").pruning).retention == 0.5


@pytest.fixture(scope="module")
def llava():
    return _model("llava_v1.5_7b_IVCP", layer=2)


@pytest.fixture(scope="module")
def internvl():
    return _model("InternVL3-8B_ivcp", layer=2)


def test_llava_prompt_is_the_official_string(llava):
    assert isinstance(llava, LlavaWrapper)
    text = llava.prompt_text([("image", None), ("text", "What is it?")])
    assert text == ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions. USER:  <image> What is it? "
                    "ASSISTANT: ")
    inputs = llava.build_inputs([("image", make_image(120, 80)), ("text", "What is it?")])
    ids = inputs["input_ids"][0]
    assert int((ids == llava.image_token_id).sum()) == llava.model.config.image_seq_length


def test_llava_pads_to_a_centred_square():
    img = make_image(120, 80, seed=4)
    sq = pad_to_square(img, (1, 2, 3))
    assert sq.size == (120, 120)
    assert sq.getpixel((0, 0)) == (1, 2, 3) and sq.getpixel((119, 119)) == (1, 2, 3)
    assert sq.getpixel((5, 20 + 7)) == img.getpixel((5, 7))  # offset (S - H) // 2 = 20
    # the harness maps a box in the padded frame back with the same offset
    assert to_gt_frame([0.0, 20 / 120, 1.0, 100 / 120], "llava", 120, 80) == pytest.approx([0, 0, 120, 80])
    tall = pad_to_square(make_image(50, 81, seed=1), (0, 0, 0))
    assert tall.size == (81, 81) and tall.getpixel((15 + 3, 9)) == make_image(50, 81, seed=1).getpixel((3, 9))


def test_llava_generate_prunes_with_union(llava):
    parts = [("image", make_image(200, 150, seed=3)), ("text", grounding_text("the red circle", "llava"))]
    text = llava.generate(parts, None)
    st = llava.last_stats
    assert isinstance(text, str) and STAT_KEYS <= set(st)
    assert st["image_tokens"] == 36 and 0 < st["kept_tokens"] < 36 and st["kv_bytes_kept"] < st["kv_bytes_full"]
    assert llava.generate(parts, None) == text  # greedy


def test_llava_baseline_keeps_every_token():
    m = _model("llava_v1.5_7b")
    m.generate([("image", make_image(90, 120)), ("text", "Describe.")], None)
    st = m.last_stats
    assert m.method is None and st["kept_tokens"] == st["image_tokens"] == 36


def test_internvl_prompt_tiles_and_pruning(internvl):
    assert isinstance(internvl, InternVLWrapper)
    parts = [("image", make_image(200, 150, seed=3)), ("text", grounding_text("the red circle", "internvl"))]
    inputs = internvl.build_inputs(parts)
    assert inputs["image_sizes"].tolist() == [[150, 200]]
    prompt = internvl.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.index("</img>\nPlease provide") > 0 and prompt.endswith("<|im_start|>assistant\n")
    text = internvl.generate(parts, None)
    st = internvl.last_stats
    assert isinstance(text, str) and STAT_KEYS <= set(st)
    assert st["image_tokens"] == 7 * 16 and st["kept_tokens"] == 56  # 3x2 + thumbnail, THUMB-BUDGET 0.5


def test_internvl_registry_max_tiles_reaches_processor_and_adapter():
    m = _model("InternVL2_5-8B_ivcp", layer=2, sets={"max_tiles": 2})
    m.generate([("image", make_image(400, 150, seed=3)), ("text", "What is it?")], None)
    st = m.last_stats
    assert st["image_tokens"] == 3 * 16 and st["kept_tokens"] == 24  # 2x1 + thumbnail (3x1 with 6 tiles)


def test_input_size_is_the_frame_the_tower_sees(llava, internvl):
    assert llava.input_size(200, 150) == (84, 84)  # tiny crop 6 x 14 px
    assert internvl.input_size(200, 150) == (3 * 112, 2 * 112)
    assert internvl.input_size(112, 112) == (112, 112)


def test_decode_drops_special_tokens(llava, internvl):
    import torch

    eos = llava.tokenizer.convert_tokens_to_ids("</s>")
    ids = llava.tokenizer.encode("the cat", add_special_tokens=False) + [eos]
    assert llava._decode(torch.tensor(ids)) == "the cat"
    end = internvl.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = internvl.tokenizer.encode("[[1, 2, 3, 4]]", add_special_tokens=False) + [end]
    assert internvl._decode(torch.tensor(ids)) == "[[1, 2, 3, 4]]"
