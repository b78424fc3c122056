"""Family-specific runtime tests (the docs/ALGORITHM.md §7 invariants of every family x method: test_runtime_matrix.py) for InternVL (native -hf layout) on a tiny random checkpoint
(eager, sdpa).

The tiny processor cuts 112-px tiles of 16 tokens, at most 6 plus a thumbnail: a 112x84 image is a 3x2 canvas
(7 tiles, 112 tokens), a 112x112 image a single tile. The tiling reaches the adapter through ``image_sizes``.
"""

from __future__ import annotations

import pytest
import torch

import ivcprune
from ivcprune.models.base import RequestInputs
from ivcprune.testing import make_image, tiny_inputs
import invariants as inv

from cases import K, PROMPTS, STEPS, backend_fixture, case

CASE = case("internvl")
PROMPT = PROMPTS["internvl"]
load = CASE.load

def make(retention=None):
    return ivcprune.IVCPrune(layer=K, retention=retention)


setup = backend_fixture(CASE, PROMPT)


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




def test_cache_lengths_and_content(setup):
    model, proc, inputs = setup
    sel = inv.check_cache(model, inputs, make, K, STEPS)
    im = sel.images[0][0]
    assert im.length == 7 * 16 and im.grid == (3, 2)
    check_thumb_budget(im)












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
