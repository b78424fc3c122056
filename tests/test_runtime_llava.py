"""Family-specific runtime tests (the docs/ALGORITHM.md §7 invariants of every family x method: test_runtime_matrix.py) for LLaVA-1.5 on a tiny random checkpoint (eager and sdpa).

LLaVA's default policy is UNION (no budget): ``IVCPrune(layer=K)`` keeps top-20 % F u seeds u IVC. A retention in
(0, 1) switches to BUDGET(rho) with the same IVC sets and seeds; 1.0 is the exact no-op.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import ivcprune
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
import invariants as inv
from cases import backend_fixture

K = 2
STEPS = 4
_MODELS = {}
PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: the red circle"


def load(attn):
    if attn not in _MODELS:
        path = tiny_checkpoint("llava")
        model = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation=attn).eval()
        _MODELS[attn] = (model, load_processor(path))
    return _MODELS[attn]


CASE = inv.Case(family="llava", load=load,
                inputs=lambda proc, images, texts: tiny_inputs("llava", proc, images, texts),
                embed=inv.embed_via_hook, image_size=(112, 84), other_size=(84, 140))


def make(retention=None):
    return ivcprune.IVCPrune(layer=K, retention=retention)


setup = backend_fixture(CASE, PROMPT)


def union_size(image):
    """|top_k(F, round(0.2 L)) u seeds u IVC| is between the largest part and the sum of the parts."""
    fg = round(0.2 * image.length)
    return max(fg, len(set(image.ivc) | set(image.seeds))), fg + len(set(image.ivc) | set(image.seeds))




def test_cache_lengths_and_content(setup):
    model, proc, inputs = setup
    sel = inv.check_cache(model, inputs, make, K, STEPS)
    im = sel.images[0][0]
    assert im.length == model.config.image_seq_length
    lo, hi = union_size(im)
    assert lo <= len(im.kept) <= hi
    assert set(im.ivc) | set(im.seeds) <= set(im.kept)
    assert len(im.ivc_cos) == len(im.ivc_sin) == round(0.05 * im.length)


def test_budget_retention_keeps_round_rho_l(setup):
    model, proc, inputs = setup
    sel = inv.check_cache(model, inputs, lambda r: make(0.5 if r is None else r), K, STEPS)
    im = sel.images[0][0]
    assert len(im.kept) == round(0.5 * im.length)
    assert set(im.ivc) | set(im.seeds) <= set(im.kept)












def test_several_images_are_selected_separately(setup):
    model, proc, _ = setup
    two = CASE.inputs(proc, [[make_image(*CASE.image_size, seed=1), make_image(*CASE.other_size, seed=2)]], [PROMPT])
    _, _, cache, trace = inv.greedy(model, two, STEPS, make())
    sel = trace.selections[-1]
    images = sel.images[0]
    assert len(images) == 2 and images[0].end < images[1].start
    for im in images:
        lo, hi = union_size(im)
        assert lo <= len(im.kept) <= hi and all(im.start <= i < im.end for i in im.kept)
    image_positions = {i for im in images for i in range(im.start, im.end)}
    assert set(sel.kept[0]) >= {i for i in range(sel.prompt_length) if i not in image_positions}
    # queries of the first image exclude the second image's tokens: its seeds are its own tokens
    assert all(images[0].start <= s < images[0].end for s in images[0].seeds)
    assert inv.cache_lengths(cache)[0] == sel.max_kept + STEPS - 1






def test_image_spans_follow_the_token_id_not_the_template():
    """Spans come from config.image_token_id, whatever precedes them; adjacent images split by tokens per image."""
    model, proc = load("sdpa")
    adapter = ivcprune.models.get_adapter(model)
    n, image_id = model.config.image_seq_length, model.config.image_token_id
    ids = torch.tensor([[5, 6, 7] + [image_id] * (2 * n) + [8, 9]])
    from ivcprune.models.base import RequestInputs

    spans = adapter.image_spans(RequestInputs(input_ids=ids, valid=torch.ones_like(ids, dtype=torch.bool)))
    assert [(im.start, im.length) for im in spans[0]] == [(3, n), (3 + n, n)]
    bad = torch.tensor([[5] + [image_id] * (n + 1)])
    with pytest.raises(ValueError, match="multiple"):
        adapter.image_spans(RequestInputs(input_ids=bad, valid=torch.ones_like(bad, dtype=torch.bool)))
