"""Family-specific runtime tests (the docs/ALGORITHM.md §7 invariants of every family x method: test_runtime_matrix.py) for Qwen2.5-VL and Qwen2-VL on tiny random checkpoints
(eager and sdpa)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

import ivcprune
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
import invariants as inv
from invariants import cache_lengths, greedy

from cases import K, QWEN_MAX_PIXELS as MAX_PIXELS, STEPS, case as case_for, load

CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}


MATRIX = [(f, a) for f in CLASSES for a in ("eager", "sdpa")]
PROMPT = "Locate the red circle on the left and output the bbox coordinates in JSON format."


@pytest.fixture(params=MATRIX, ids=[f"{f}-{a}" for f, a in MATRIX])
def setup(request):
    family, attn = request.param
    case = case_for(family)
    model, proc = case.load(attn)
    inputs = case.inputs(proc, make_image(*case.image_size, seed=1), PROMPT)
    return case, model, proc, inputs


def method(retention=0.5):
    return ivcprune.IVCPrune(layer=K, retention=retention)


def make(retention):
    return ivcprune.IVCPrune(layer=K, retention=retention)




def test_cache_lengths_and_content(setup):
    case, model, proc, inputs = setup
    sel = inv.check_cache(model, inputs, make, K, STEPS)
    assert sel.kept_image_tokens[0] == round(0.5 * sel.image_tokens[0])












def test_several_images_are_budgeted_separately(setup):
    case, model, proc, inputs = setup
    two = case.inputs(proc, [[make_image(*case.image_size, seed=1), make_image(*case.other_size, seed=2)]], [PROMPT])
    _, _, cache, trace = greedy(model, two, STEPS, method())
    sel = trace.selections[-1]
    images = sel.images[0]
    assert len(images) == 2 and images[0].length != images[1].length
    # generate() passes encoded images, not image_grid_thw: counts and grids still match the processor's
    merge = model.config.vision_config.spatial_merge_size
    expected = [(t, h // merge, w // merge) for t, h, w in two["image_grid_thw"].tolist()]
    assert [im.grid for im in images] == expected
    for im in images:
        assert len(im.kept) == round(0.5 * im.length)
        assert all(im.start <= i < im.end for i in im.kept)
    image_positions = {i for im in images for i in range(im.start, im.end)}
    kept = set(sel.kept[0])
    assert kept >= {i for i in range(sel.prompt_length) if i not in image_positions}






def test_hooks_removed_after_block():
    model, proc = load("qwen2_5_vl", "sdpa")
    counts = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())  # noqa: E731
    before = counts()
    with ivcprune.prune(model, method()):
        assert counts() > before
    assert counts() == before


def test_unsupported_setups_raise_before_any_work():
    model, proc = load("qwen2_5_vl", "sdpa")
    layers = model.config.text_config.num_hidden_layers
    for bad in (0, layers, layers + 3):
        with pytest.raises(ValueError, match="layer"):
            with ivcprune.prune(model, ivcprune.IVCPrune(layer=bad) if bad else ivcprune.IVCPrune(layer=bad)):
                pass
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="retention"):
            ivcprune.IVCPrune(layer=2, retention=bad)
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(112, 84, seed=0), "hi")
    with pytest.raises(NotImplementedError, match="static"):
        with ivcprune.prune(model, method()):
            model.generate(**inputs, max_new_tokens=2, cache_implementation="static")
    compiled = torch.compile(model)
    with pytest.raises(NotImplementedError, match="compile"):
        with ivcprune.prune(compiled, method()):
            pass
    with pytest.raises(ValueError, match="labels"):
        with ivcprune.prune(model, method()):
            model(**inputs, labels=inputs["input_ids"])
    with pytest.raises(NotImplementedError, match="no adapter"):
        with ivcprune.prune(torch.nn.Linear(2, 2), method()):
            pass


def test_continuation_prefill_on_a_pruned_cache_passes_through_with_a_warning():
    model, proc = load("qwen2_5_vl", "sdpa")
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        out = model(**inputs, use_cache=True)
        p = trace.selections[-1].max_kept
        more = torch.tensor([[30, 31, 32]])
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(more)], dim=1)
        with pytest.warns(UserWarning, match="continuation prefill"):
            nxt = model(input_ids=more, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
    assert nxt.logits.shape[1] == 3 and torch.isfinite(nxt.logits).all()
    assert cache_lengths(nxt.past_key_values) == [p + 3] * model.config.text_config.num_hidden_layers
    assert len(trace.selections) == 1  # nothing re-selected


def test_generate_without_cache_reselects_at_every_step():
    model, proc = load("qwen2_5_vl", "sdpa")
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert len(trace.selections) == 3 and all(s.pruned for s in trace.selections)
    assert [s.prompt_length for s in trace.selections] == [inputs["input_ids"].shape[1] + t for t in range(3)]


def test_bfloat16_model_prunes_with_float32_scoring():
    """The model keeps its dtype; scoring runs in float32; KV accounting reads the live (2-byte) tensors."""
    path = tiny_checkpoint("qwen2_5_vl", max_pixels=MAX_PIXELS)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).eval()
    proc = load_processor(path)
    batch = tiny_inputs("qwen2_5_vl", proc, [make_image(168, 140, seed=1), make_image(112, 196, seed=2)],
                        [PROMPT, "What is in the picture?"])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    _, _, cache, trace = greedy(model, batch, STEPS, method())
    sel = trace.selections[-1]
    cfg = model.config.text_config
    assert sel.kept_image_tokens == [round(0.5 * n) for n in sel.image_tokens]
    assert cache.layers[0].keys.dtype == torch.bfloat16
    assert cache_lengths(cache) == [sel.max_kept + STEPS - 1] * cfg.num_hidden_layers
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert sel.kv_bytes_per_token == cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 2
