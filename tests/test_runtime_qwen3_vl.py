"""Qwen3-VL-specific runtime tests, dense and MoE, on tiny random checkpoints (the docs/ALGORITHM.md §7 invariants of
every family x method x backend run in test_runtime_matrix.py): the checkpoint itself, several images, DeepStack with K
inside and outside its layers, the applied IVC rule, the default K, and the video refusal.

The tiny models add DeepStack features after decoder layers 0, 1 and 2 of 4: K = 2 (the matrix) and K = 1 cut the
sequence before the last DeepStack layer, K = 3 after it.
"""

from __future__ import annotations

import pytest
import torch

import ivcprune
from ivcprune.testing import make_image, tiny_inputs
from ivcprune.testing.qwen import image_tokens
import invariants as inv
from invariants import Case, greedy
from cases import K, QWEN3_MAX_PIXELS as MAX_PIXELS, STEPS, case as case_for, load

FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
PROMPT = "Locate the red circle on the left and output the bbox coordinates in JSON format."


def make(retention, layer=K):
    return ivcprune.IVCPrune(layer=layer, retention=retention)


def test_tiny_checkpoint_is_a_qwen3_vl():
    model, proc = load("qwen3_vl_moe", "sdpa")
    cfg = model.config
    assert cfg.vision_config.patch_size == 16 and cfg.vision_config.spatial_merge_size == 2
    assert cfg.text_config.rope_parameters["mrope_section"] == [6, 5, 5]
    assert cfg.text_config.rope_parameters["rope_theta"] == 5e6
    assert len(cfg.vision_config.deepstack_visual_indexes) == 3
    assert type(model.model.language_model.layers[0].mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
    inputs = tiny_inputs("qwen3_vl_moe", proc, make_image(192, 160, seed=1), PROMPT)
    n_image = int((inputs["input_ids"] == cfg.image_token_id).sum())
    assert n_image == image_tokens(192, 160, 4 * 32 * 32, MAX_PIXELS, patch=16)
    assert inputs["image_grid_thw"].tolist() == [[1, 10, 12]]  # 16-px patches of a 192 wide, 160 high image
    text = proc.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")  # no default system turn
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_several_images_are_budgeted_separately(family, attn):
    case = case_for(family)
    model, proc = case.load(attn)
    two = case.inputs(proc, [[make_image(*case.image_size, seed=1), make_image(*case.other_size, seed=2)]], [PROMPT])
    _, _, cache, trace = greedy(model, two, STEPS, make(None))
    sel = trace.selections[-1]
    images = sel.images[0]
    assert len(images) == 2 and images[0].length != images[1].length
    expected = [(t, h // 2, w // 2) for t, h, w in two["image_grid_thw"].tolist()]
    assert [im.grid for im in images] == expected
    for im in images:
        assert len(im.kept) == round(0.5 * im.length)
        assert all(im.start <= i < im.end for i in im.kept)
    image_positions = {i for im in images for i in range(im.start, im.end)}
    assert set(sel.kept[0]) >= {i for i in range(sel.prompt_length) if i not in image_positions}
    assert inv.cache_lengths(cache) == [sel.max_kept + STEPS - 1] * model.config.text_config.num_hidden_layers


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [1, 3])
def test_deepstack_inside_and_outside_the_cut(family, layer):
    """K = 1 (two DeepStack layers run on the kept rows) and K = 3 (all before the cut, the model's own path)."""
    case = case_for(family)
    model, proc = case.load("sdpa")
    inputs = case.inputs(proc, make_image(*case.image_size, seed=1), PROMPT)
    with ivcprune.prune(model, make(None, layer)):
        hooked = sum(len(m._forward_hooks) for m in model.model.language_model.layers)
    assert hooked == (3 if layer <= 2 else 0)  # the runtime takes DeepStack over only when the cut comes first
    inv.check_oracle(case, model, inputs, lambda r: make(r, layer), layer, STEPS)
    inv.check_cache(model, inputs, lambda r: make(r, layer), layer, STEPS)


def test_deepstack_is_not_dropped():
    """Pruning at K = 1 without re-adding the DeepStack features would change the logits: the oracle without them
    disagrees with the pruned run, the oracle with them agrees (so the check above is not vacuous)."""
    case = case_for("qwen3_vl")
    model, proc = case.load("sdpa")
    inputs = case.inputs(proc, make_image(*case.image_size, seed=1), PROMPT)
    seq, scores, _, trace = greedy(model, inputs, 1, make(None, 1))
    keep = trace.selections[-1].kept[0]
    plain = Case(**{**case.__dict__, "residual": None})
    with_ds = inv.oracle_logits(case, model, inputs, keep, [], 1)
    without = inv.oracle_logits(plain, model, inputs, keep, [], 1)
    valid = torch.isfinite(scores[0][0])  # min_new_tokens masks the end-of-sequence ids
    assert torch.allclose(with_ds[0][valid], scores[0][0][valid], atol=1e-5)
    assert not torch.allclose(without[0][valid], scores[0][0][valid], atol=1e-3)


def test_applied_ivc_rule_runs_and_differs_from_the_reference():
    model, proc = load("qwen3_vl", "sdpa")
    inputs = tiny_inputs("qwen3_vl", proc, make_image(192, 160, seed=1), PROMPT)
    kept = {}
    for rule in ("reference", "applied"):
        with torch.no_grad(), ivcprune.prune(model, ivcprune.IVCPrune(layer=K, ivc_rule=rule)) as trace:
            model(**inputs)
        im = trace.selections[-1].images[0][0]
        assert len(im.kept) == round(0.5 * im.length)
        kept[rule] = (im.ivc_cos, im.ivc_sin)
    assert kept["reference"] != kept["applied"]
    with torch.no_grad(), ivcprune.prune(model, ivcprune.IVCPrune(layer=K)) as trace:
        model(**inputs)
    assert (trace.selections[-1].images[0][0].ivc_cos, trace.selections[-1].images[0][0].ivc_sin) == kept["reference"]


def test_default_layer_and_family():
    for family in FAMILIES:
        model, _ = load(family, "sdpa")
        adapter = ivcprune.models.get_adapter(model)
        assert adapter.family == family
        assert ivcprune.IVCPrune().resolve_layer(adapter) == 2  # 4 layers: no tuned entry, floor(4 / 2)
    from ivcprune.methods.ivcp.defaults import family_defaults

    for family in FAMILIES:
        table = family_defaults(family)
        # round(N_L * 16 / 28): 2B 28 -> 16, 4B / 8B 36 -> 21, 30B-A3B 48 -> 27, 32B 64 -> 37
        assert [table.default_layer(n) for n in (28, 36, 48, 64)] == [16, 21, 27, 37]


def test_video_prompt_raises_under_prune():
    model, proc = load("qwen3_vl", "sdpa")
    inputs = tiny_inputs("qwen3_vl", proc, make_image(192, 160, seed=1), PROMPT)
    ids = inputs["input_ids"].clone()
    ids[0, 1] = model.config.video_token_id  # a video placeholder in the prompt
    with pytest.raises(NotImplementedError, match="video"), ivcprune.prune(model, make(None)):
        model(input_ids=ids, attention_mask=inputs["attention_mask"])
    with pytest.raises(NotImplementedError, match="video"), ivcprune.prune(model, make(None)):
        model(**inputs, video_grid_thw=torch.tensor([[2, 4, 4]]))


@pytest.mark.parametrize("family,cls", [("qwen3_vl", "Qwen3VLModel"), ("qwen3_vl_moe", "Qwen3VLMoeModel")])
def test_headless_model_classes_are_covered(family, cls):
    """The ...Model classes (no LM head) get the same adapter: a pruned forward returns the kept rows."""
    import transformers

    from ivcprune.testing import tiny_checkpoint

    model = getattr(transformers, cls).from_pretrained(tiny_checkpoint(family, max_pixels=MAX_PIXELS)).eval()
    _, proc = load(family, "sdpa")
    inputs = tiny_inputs(family, proc, make_image(192, 160, seed=1), PROMPT)
    assert ivcprune.models.get_adapter(model).family == family
    with torch.no_grad(), ivcprune.prune(model, make(None, 1)) as trace:
        out = model(**inputs)
    sel = trace.selections[-1]
    assert sel.pruned and out.last_hidden_state.shape[1] == sel.max_kept < inputs["input_ids"].shape[1]
