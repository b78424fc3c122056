"""Qwen3-VL in the harness: family objects, the grounding parser on golden answers in Qwen3-VL's format and its
0-1000 relative frame, registry entries, and the wrapper on tiny dense and MoE checkpoints."""

from __future__ import annotations

import pytest

from ivcprune.eval.datasets.grounding import FrameError, check_frame, grounding_text, parse_and_map, parse_box
from ivcprune.eval.families import get_family
from ivcprune.eval.registry import resolve
from ivcprune.eval.wrappers import load_model
from ivcprune.testing import make_image, tiny_checkpoint

# Answers as Qwen3-VL writes them (JSON list of {"bbox_2d", "label"}, often in a ```json fence).
GOLDEN = [
    ('```json\n[\n\t{"bbox_2d": [217, 113, 588, 939], "label": "man in red"}\n]\n```', [217, 113, 588, 939]),
    ('[{"bbox_2d": [0, 0, 1000, 1000], "label": "the whole picture"}]', [0, 0, 1000, 1000]),
    ('{"bbox_2d":[12,34,  56,\n78]}', [12, 34, 56, 78]),
    ('[{"bbox_2d": [10.5, 20, 30.25, 40], "label": "x"}]', [10.5, 20, 30.25, 40]),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]', [1, 2, 3, 4]),
    ('{"bbox_2d": [1, 2, 3]}', None),
    ("[217, 113, 588, 939]", None),  # a bare list is not Qwen3-VL's answer format
    ("I cannot find it.", None),
]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
@pytest.mark.parametrize("text,expected", GOLDEN)
def test_parser_on_golden_answers(family, text, expected):
    assert parse_box(text, family) == expected


def test_relative_frame_both_ends():
    """1000 is the far edge (x * W / 1000); a 0-999 reading is one registry key away (box_scale: 999)."""
    assert parse_and_map('"bbox_2d": [0, 0, 1000, 1000]', "qwen3_vl", 640, 480) == [0, 0, 640, 480]
    assert parse_and_map('"bbox_2d": [500, 250, 750, 500]', "qwen3_vl", 640, 480) == [320, 120, 480, 240]
    assert parse_and_map('"bbox_2d": [0, 0, 999, 999]', "qwen3_vl", 1000, 500) == [0, 0, 999, 499.5]
    assert parse_and_map('"bbox_2d": [0, 0, 999, 999]', "qwen3_vl", 640, 480, box_scale=999) == [0, 0, 640, 480]
    assert parse_and_map('"bbox_2d": [0, 0, 999, 999]', "qwen3_vl_moe", 640, 480, box_scale=999) == [0, 0, 640, 480]
    # the absolute (resized-pixel) reading of Qwen2.5-VL would leave this box untouched: the frames differ
    assert parse_and_map('"bbox_2d": [500, 250, 750, 500]', "qwen2_5_vl", 640, 480) == [500, 250, 750, 500]


def test_standard_splits_serve():
    for family in ("qwen3_vl", "qwen3_vl_moe"):
        check_frame("RefCOCO_testA", family)
        with pytest.raises(FrameError):
            check_frame("RefCOCO_testA_for_qwen25vl", family)


def test_prompts_follow_qwen25vl():
    fam, ref = get_family("qwen3_vl"), get_family("qwen2_5_vl")
    assert grounding_text("Man In Red", "qwen3_vl") == \
        "\nLocate Man In Red and output the bbox coordinates in JSON format."
    assert (fam.mcq_style, fam.vqa_suffix, fam.yorn_suffix("POPE")) == \
        (ref.mcq_style, ref.vqa_suffix, ref.yorn_suffix("POPE"))
    assert fam.resized_frame_suffix == "" and not fam.frame_mismatch((64, 64), 100, 100)


def test_registry_entries():
    expected = {"Qwen3-VL-2B-Instruct": 16, "Qwen3-VL-4B-Instruct": 21, "Qwen3-VL-8B-Instruct": 21,
                "Qwen3-VL-32B-Instruct": 37, "Qwen3-VL-30B-A3B-Instruct": 27}
    for name, k in expected.items():
        entry = resolve(f"{name}_IVCP")
        assert entry.checkpoint == f"Qwen/{name}"
        assert entry.family == ("qwen3_vl_moe" if "A3B" in name else "qwen3_vl")
        assert entry.pruning["layer"] == k and entry.pruning["retention"] == 0.5
        assert (entry.get("min_pixels"), entry.get("max_pixels")) == (256 * 32 * 32, 1280 * 32 * 32)
        assert resolve(name).pruning is None  # the unpruned entry
        assert resolve(f"{name}_FastV").pruning["method"] == "fastv"  # a derived comparison variant


def test_applied_ivc_rule_from_the_registry():
    from ivcprune.eval.registry import make_method

    entry = resolve("Qwen3-VL-8B-Instruct_IVCP", sets={"pruning.ivc_rule": "applied"})
    method = make_method(entry.pruning)
    assert (method.layer, method.retention, method.ivc_rule) == (21, 0.5, "applied")
    assert make_method(resolve("Qwen3-VL-8B-Instruct_IVCP").pruning).ivc_rule is None  # the family default


def _model(family, name, **kw):
    path = str(tiny_checkpoint(family))
    sets = {"generation.max_new_tokens": 6, "min_pixels": 4 * 32 * 32, "max_pixels": 64 * 32 * 32}
    return load_model(resolve(name, model_path=path, sets=sets, **kw))


def test_wrapper_dense_unpruned_and_pruned():
    m = _model("qwen3_vl", "Qwen3-VL-8B-Instruct")
    assert type(m.model).__name__ == "Qwen3VLForConditionalGeneration"
    inputs = m.build_inputs([("image", make_image(56, 56)), ("text", "Locate it.")])
    prompt = m.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.startswith("<|im_start|>user\n<|vision_start|>")  # Qwen3-VL: no default system turn
    assert prompt.endswith("Locate it.<|im_end|>\n<|im_start|>assistant\n")
    assert m.input_size(200, 150) == (192, 160)  # multiples of 32
    parts = [("image", make_image(200, 150, seed=3)), ("text", grounding_text("the red circle", "qwen3_vl"))]
    text = m.generate(parts, None)
    assert isinstance(text, str) and m.last_stats["image_tokens"] == (192 // 32) * (160 // 32)
    pruned = _model("qwen3_vl", "Qwen3-VL-8B-Instruct_IVCP", layer=2)
    pruned.generate(parts, None)
    st = pruned.last_stats
    assert st["kept_tokens"] == round(0.5 * st["image_tokens"]) and st["kv_bytes_kept"] < st["kv_bytes_full"]


def test_wrapper_moe():
    m = _model("qwen3_vl_moe", "Qwen3-VL-30B-A3B-Instruct_IVCP", layer=1)
    assert type(m.model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    m.generate([("image", make_image(200, 150, seed=3)), ("text", "What is in the picture?")], None)
    assert m.last_stats["kept_tokens"] < m.last_stats["image_tokens"]
