"""Qwen2.5-VL / Qwen2-VL wrappers on tiny random checkpoints: prompts, generate, last_stats, input_size."""

from __future__ import annotations

import pytest

from ivcprune.eval.datasets.grounding import grounding_text
from ivcprune.eval.registry import resolve
from ivcprune.eval.wrappers import load_model
from ivcprune.testing import make_image, tiny_checkpoint

STAT_KEYS = {"image_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept", "prefill_ms", "decode_ms", "new_tokens"}


def _model(family: str, name: str, **kw):
    path = str(tiny_checkpoint(family))
    sets = {"generation.max_new_tokens": 6, **kw.pop("sets", {})}
    return load_model(resolve(name, model_path=path, sets=sets, **kw))


@pytest.fixture(scope="module")
def qwen25():
    return _model("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct")


def test_grounding_prompt_through_generate(qwen25):
    img = make_image(200, 150, seed=3)
    parts = [("image", img), ("text", grounding_text("the red circle", "qwen2_5_vl"))]
    text = qwen25.generate(parts, None)
    assert isinstance(text, str)
    assert STAT_KEYS <= set(qwen25.last_stats)
    st = qwen25.last_stats
    assert st["image_tokens"] == st["kept_tokens"] == (196 // 14) * (140 // 14) // 4
    assert st["kv_bytes_full"] == st["kv_bytes_kept"] > 0 and 1 <= st["new_tokens"] <= 6
    assert st["prefill_ms"] > 0 and st["decode_ms"] >= 0
    assert qwen25.generate(parts, None) == text  # greedy
    assert qwen25.meta["image_processor"] == "Qwen2VLImageProcessorPil" and qwen25.meta["dtype"] == "float32"


def test_chat_template_image_then_text(qwen25):
    inputs = qwen25.build_inputs([("image", make_image(56, 56)), ("text", "Locate it.")])
    prompt = qwen25.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert prompt.index("<|vision_end|>") < prompt.index("Locate it.")
    assert prompt.endswith("Locate it.<|im_end|>\n<|im_start|>assistant\n")


def test_input_size_follows_registry_pixels(qwen25):
    assert qwen25.input_size(200, 150) == (196, 140)
    assert qwen25.input_size(70, 70) == (56, 56)
    small = _model("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct", sets={"max_pixels": 16 * 28 * 28})
    w, h = small.input_size(640, 480)
    assert w * h <= 16 * 28 * 28 and (w, h) != (644, 476)
    small.generate([("image", make_image(640, 480)), ("text", "x")], None)
    assert small.last_stats["image_tokens"] == (w // 28) * (h // 28)


def test_pruned_entry_fills_stats_from_selection():
    m = _model("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct_IVCP", layer=2)
    m.generate([("image", make_image(200, 150, seed=1)), ("text", grounding_text("a blue square", "qwen2_5_vl"))],
               None)
    st = m.last_stats
    assert st["kept_tokens"] < st["image_tokens"] and st["kv_bytes_kept"] < st["kv_bytes_full"]


def test_qwen2_vl_keeps_box_tokens():
    m = _model("qwen2_vl", "Qwen2-VL-7B-Instruct")
    tok = m.tokenizer
    ids = tok.encode("<|box_start|>(1,2),(3,4)<|box_end|><|im_end|>")
    import torch

    assert m._decode(torch.tensor(ids)) == "<|box_start|>(1,2),(3,4)<|box_end|>"
    text = m.generate([("image", make_image(84, 84)), ("text", grounding_text("the cat", "qwen2_vl"))], None)
    assert isinstance(text, str) and STAT_KEYS <= set(m.last_stats)
