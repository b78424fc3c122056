"""Runtime invariants of docs/ALGORITHM.md §7 for InternVL (native -hf layout) on a tiny random checkpoint
(eager, sdpa).

The tiny processor cuts 112-px tiles of 16 tokens, at most 6 plus a thumbnail: a 112x84 image is a 3x2 canvas
(7 tiles, 112 tokens), a 112x112 image a single tile. The tiling reaches the adapter through ``image_sizes``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLForConditionalGeneration

import ivcprune
from ivcprune.models.base import RequestInputs
from ivcprune.models.internvl import image_sizes
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
import invariants as inv

K = 2
STEPS = 4
_MODELS = {}
PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>the red circle</ref>"


def load(attn):
    if attn not in _MODELS:
        path = tiny_checkpoint("internvl")
        model = InternVLForConditionalGeneration.from_pretrained(path, attn_implementation=attn).eval()
        _MODELS[attn] = (model, load_processor(path))
    return _MODELS[attn]


def _flat(images):
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in _flat(item)]


def internvl_inputs(proc, images, texts):
    """Processor outputs plus image_sizes, the caller-side tiling information."""
    out = tiny_inputs("internvl", proc, images, texts)
    flat = _flat(images)
    if flat:
        out["image_sizes"] = image_sizes(flat)
    return out


CASE = inv.Case(family="internvl", load=load, inputs=internvl_inputs, embed=inv.embed_via_hook,
                image_size=(112, 84), other_size=(112, 112))


def make(retention=None):
    return ivcprune.IVCPrune(layer=K, retention=retention)


@pytest.fixture(params=["eager", "sdpa"])
def setup(request):
    model, proc = CASE.load(request.param)
    return model, proc, CASE.inputs(proc, make_image(*CASE.image_size, seed=1), PROMPT)


def check_thumb_budget(im, tile_tokens=16):
    """Kept = round(0.5 L) (overflow truncated by index), IVC per tile, seeds on the thumbnail."""
    tiles = im.length // tile_tokens
    assert len(im.kept) == max(1, round(0.5 * im.length)) and all(im.start <= i < im.end for i in im.kept)
    per_tile = round(0.1 * tile_tokens)
    for t in range(tiles):
        lo, hi = im.start + t * tile_tokens, im.start + (t + 1) * tile_tokens
        assert sum(lo <= i < hi for i in im.ivc_cos) == per_tile
        assert sum(lo <= i < hi for i in im.ivc_sin) == per_tile
    thumb = range(im.end - tile_tokens, im.end)
    assert len(im.seeds) == max(1, round(0.01 * tile_tokens)) and all(s in thumb for s in im.seeds)


def test_identity_at_retention_one_is_bit_exact(setup):
    inv.check_identity(*setup[::2], make, STEPS)


def test_cache_lengths_and_content(setup):
    model, proc, inputs = setup
    sel = inv.check_cache(model, inputs, make, K, STEPS)
    im = sel.images[0][0]
    assert im.length == 7 * 16 and im.grid == (3, 2)
    check_thumb_budget(im)


def test_decode_positions_are_original(setup):
    inv.check_positions(*setup[::2], make, K, STEPS)


def test_hand_written_decode_loop_gets_original_positions(setup):
    inv.check_handwritten_decode(*setup[::2], make, STEPS)


def test_cached_decode_equals_oracle(setup):
    model, proc, inputs = setup
    inv.check_oracle(CASE, model, inputs, make, K, STEPS)


def test_padded_batch_equals_each_sample_alone(setup):
    model, proc, _ = setup
    images = [make_image(*CASE.image_size, seed=1), make_image(*CASE.other_size, seed=2)]
    sel = inv.check_padded_batch(CASE, model, proc, make, STEPS, images, [PROMPT, "What is in the picture?"])
    assert [im.grid for ims in sel.images for im in ims] == [(3, 2), (1, 1)]


def test_text_only_prompt_is_untouched(setup):
    model, proc, _ = setup
    inv.check_text_only(CASE, model, proc, make, STEPS)


def test_several_images_are_budgeted_separately(setup):
    model, proc, _ = setup
    pair = [make_image(*CASE.image_size, seed=1), make_image(84, 140, seed=2), make_image(*CASE.other_size, seed=3)]
    three = CASE.inputs(proc, [pair], [PROMPT])
    _, _, cache, trace = inv.greedy(model, three, STEPS, make())
    sel = trace.selections[-1]
    images = sel.images[0]
    assert [im.grid for im in images] == [(3, 2), (2, 3), (1, 1)]
    for im in images:
        check_thumb_budget(im)
    image_positions = {i for im in images for i in range(im.start, im.end)}
    assert set(sel.kept[0]) >= {i for i in range(sel.prompt_length) if i not in image_positions}
    assert inv.cache_lengths(cache)[0] == sel.max_kept + STEPS - 1


def test_use_cache_false_returns_kept_rows(setup):
    inv.check_use_cache_false(*setup[::2], make)


def test_selection_is_deterministic_across_threads_and_backends():
    kept = inv.kept_sets_across(CASE, make, lambda proc: CASE.inputs(proc, make_image(*CASE.image_size, seed=1), PROMPT))
    assert all(k == kept[0] for k in kept)


def test_unknown_tiling_raises_but_single_tile_needs_none():
    model, proc = load("sdpa")
    tiled = tiny_inputs("internvl", proc, make_image(*CASE.image_size, seed=1), PROMPT)  # no image_sizes
    with pytest.raises(ValueError, match="image_sizes"):
        with torch.no_grad(), ivcprune.prune(model, make()):
            model(**tiled)
    with torch.no_grad(), ivcprune.prune(model, make(1.0)) as trace:  # the no-op path needs no tiling
        model(**tiled)
    assert trace.last.pruned is False
    single = tiny_inputs("internvl", proc, make_image(*CASE.other_size, seed=1), PROMPT)
    with torch.no_grad(), ivcprune.prune(model, make()) as trace:
        model(**single)
    check_thumb_budget(trace.last.images[0][0])


def test_image_sizes_must_match_the_prompt():
    model, proc = load("sdpa")
    adapter = ivcprune.models.get_adapter(model)
    n, image_id = 16, model.config.image_token_id
    ids = torch.tensor([[1, 2] + [image_id] * (7 * n) + [3] + [image_id] * (7 * n) + [4]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    spans = adapter.image_spans(RequestInputs(ids, valid, torch.tensor([[84, 112], [140, 84]])))
    assert [(im.start, im.length, im.grid) for im in spans[0]] == [(2, 112, (3, 2)), (115, 112, (2, 3))]
    with pytest.raises(ValueError, match="rows"):
        adapter.image_spans(RequestInputs(ids, valid, torch.tensor([[84, 112]])))
    with pytest.raises(ValueError, match="tiling"):  # a square image is never cut into 3x2 + thumbnail
        adapter.image_spans(RequestInputs(ids, valid, torch.tensor([[84, 112], [5000, 5000]])))
