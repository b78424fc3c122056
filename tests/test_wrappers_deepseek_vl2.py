"""DeepSeek-VL2 harness wrapper on tiny random checkpoints: prompt, generate, stats, grounding tags, pruning."""

from __future__ import annotations

import pytest
import torch

from ivcprune.eval.datasets.grounding import grounding_text, parse_and_map
from ivcprune.eval.registry import resolve
from ivcprune.eval.wrappers import family_status, load_model
from ivcprune.models.deepseek_vl2 import make_tiny_deepseek_vl2
from ivcprune.testing import make_image

STAT_KEYS = {"image_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept", "prefill_ms", "decode_ms", "new_tokens"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2_wrap") / "small", "small", seed=2)


def _model(ckpt, name, **kw):
    sets = {"generation.max_new_tokens": 5, **kw.pop("sets", {})}
    return load_model(resolve(name, model_path=str(ckpt), sets=sets, **kw))


@pytest.fixture(scope="module")
def unpruned(ckpt):
    return _model(ckpt, "deepseek_vl2_small")


def test_family_has_a_wrapper():
    assert family_status("deepseek_vl2")[0]


def test_prompt_is_one_user_turn_image_then_text(unpruned):
    inputs = unpruned.build_inputs([("image", make_image(96, 64)), ("text", "Locate <|ref|>the dog<|/ref|> in the "
                                                                            "given image.")])
    ids = inputs["input_ids"][0]
    mask = inputs["images_seq_mask"][0]
    text = unpruned.processor.decode(ids[~mask])
    assert text.startswith("<｜begin▁of▁sentence｜><|User|>: \nLocate <|ref|>the dog<|/ref|> in the given image.")
    assert text.endswith("\n\n<|Assistant|>:")
    assert int(mask.sum()) == 421 and inputs["image_sizes"][0, 0].tolist() == [64, 96]  # (height, width)


def test_generate_stats_and_greedy(unpruned):
    parts = [("image", make_image(200, 150, seed=3)), ("text", grounding_text("the red circle", "deepseek_vl2"))]
    text = unpruned.generate(parts, None)
    st = unpruned.last_stats
    assert isinstance(text, str) and STAT_KEYS <= set(st)
    assert st["image_tokens"] == st["kept_tokens"] == 421  # 200x150 -> one 384 tile
    cfg = unpruned.model.config
    assert unpruned.kv_per_token == 3 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4  # MLA latent + k_pe, fp32
    assert st["kv_bytes_full"] == st["kv_bytes_kept"] > 0 and 1 <= st["new_tokens"] <= 5
    assert st["prefill_ms"] > 0 and st["decode_ms"] >= 0
    assert unpruned.generate(parts, None) == text
    assert unpruned.meta["dtype"] == "float32" and unpruned.meta["attn"] == "sdpa"
    assert unpruned.input_size(1024, 768) == (1152, 768)


def test_decode_keeps_grounding_tags_and_boxes_map_on_999(unpruned):
    tok = unpruned.tokenizer
    ids = tok.encode("<|ref|>the dog<|/ref|><|det|>[[100, 200, 500, 999]]<|/det|>", add_special_tokens=False)
    ids += [unpruned.processor.eos_id, unpruned.processor.eos_id]
    text = unpruned._decode(torch.tensor(ids))
    assert text == "<|ref|>the dog<|/ref|><|det|>[[100, 200, 500, 999]]<|/det|>"
    assert parse_and_map(text, "deepseek_vl2", 999, 1998) == [100.0, 400.0, 500.0, 1998.0]


def test_pruned_entries(ckpt):
    small = _model(ckpt, "deepseek_vl2_small_ivcp", layer=2)
    assert small.method.layer == 2 and small.method.retention == 0.5
    small.generate([("image", make_image(768, 384, seed=1)), ("text", grounding_text("a blue square", "deepseek_vl2"))])
    st = small.last_stats
    assert st["kept_tokens"] < st["image_tokens"] == 617 and st["kv_bytes_kept"] < st["kv_bytes_full"]
    assert st["selection_ms"] > 0
    for name, k in (("deepseek_vl2_small_ivcp", 17), ("deepseek_vl2_tiny_ivcp", 8), ("deepseek_vl2_ivcp", 19)):
        entry = resolve(name)  # K at small's relative depth 17/27 for the 12- and 30-layer checkpoints
        assert (entry.family, entry.pruning["layer"], entry.pruning["retention"]) == ("deepseek_vl2", k, 0.5)
        assert entry.get("box_scale") == 999 and resolve(name[:-5]).pruning is None
