"""Baselines on DeepSeek-VL2 (docs/ALGORITHM.md §9, §4.2): newlines and the separator are kept and not counted, the
budget is round(rho * countable), and the uniform grid samples the global g x g view and the local
(g n_h) x (g n_w) view.

Hand-made layouts first (real g = 14 and a small g = 4 case written out), then the tiny checkpoint end to end.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import ivcprune
from ivcprune.core.rope import default_inv_freq
from ivcprune.methods import make_method
from ivcprune.methods.base import SampleContext
from ivcprune.methods.fastv import CAPTURE_KEY
from ivcprune.methods.grid import lattice, split_budget
from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor, ImageSpan, make_tiny_deepseek_vl2
from ivcprune.methods.ivcp import family_defaults, ivc_sets
from ivcprune.models.deepseek_vl2.adapter import DeepseekImage, DeepseekVL2Adapter

DEEPSEEK_SETTINGS = family_defaults("deepseek_vl2")

K = 2
COMPARISON = ["fastv", "random", "grid", "fastv+ivc", "random+ivc", "grid+ivc"]
TILINGS = [(1, 1), (2, 1)]  # (n_w, n_h)


# --------------------------------------------------------------------------------------------- hand-made layouts
def record(n_w, n_h, start=3, g=14):
    span = ImageSpan(start, n_w, n_h, g=g)
    return DeepseekImage(start=start, length=span.length, grid=(n_w, n_h), layout=span)


def context(image, text=6, seed=0):
    """One sample: 3 text tokens, the image, ``text`` text tokens; FastV's q/k captured as random tensors."""
    length = image.end + text
    gen = torch.Generator().manual_seed(seed)
    heads, d = 2, 8
    q, k = torch.randn(1, heads, length, d, generator=gen), torch.randn(1, heads, length, d, generator=gen)
    return SampleContext(index=0, valid=torch.ones(length, dtype=torch.bool), positions=torch.arange(length)[None],
                         images=[image], inv_freq=default_inv_freq(1e4, 64), settings=DEEPSEEK_SETTINGS,
                         adapter=DeepseekVL2Adapter(None), extras={CAPTURE_KEY: (q, k)})


def structural(image):
    span = image.layout
    return set(span.newline_positions()) | {span.separator}


@pytest.mark.parametrize("n_w,n_h", TILINGS)
def test_hooks_structural_tokens_and_grids(n_w, n_h):
    image = record(n_w, n_h)
    adapter = DeepseekVL2Adapter(None)
    s = adapter.structural_tokens(image)
    assert set((s + image.start).tolist()) == structural(image)
    assert s.numel() == 14 + 1 + 14 * n_h  # global newlines, separator, local newlines
    (glob, gr, gc), (local, lr, lc) = adapter.token_grids(image)
    assert (gr, gc, lr, lc) == (14, 14, 14 * n_h, 14 * n_w)
    assert glob.tolist() == [i * 15 + j for i in range(14) for j in range(14)]
    w = 14 * n_w + 1
    assert local.tolist() == [211 + r * w + c for r in range(14 * n_h) for c in range(14 * n_w)]
    every = set(glob.tolist()) | set(local.tolist()) | set(s.tolist())
    assert every == set(range(image.length)) and glob.numel() + local.numel() + s.numel() == image.length
    # the other families keep the old behaviour: no structural tokens, no grids of their own
    base = ivcprune.models.base.FamilyAdapter(None)
    assert base.structural_tokens(image).numel() == 0 and base.token_grids(image) is None


def test_split_budget_is_exact():
    assert split_budget(196, [196, 196], 0.5) == [98, 98]
    assert split_budget(176, [196, 392], 0.3) == [59, 117]  # 59 + 118 = 177 -> the larger grid gives one back
    assert split_budget(14, [16, 32], 0.3) == [5, 9]
    assert split_budget(3, [1, 1, 1, 1], 0.5) == [1, 1, 1, 0]  # round(0.5) = 0 each; the earliest of equal grids fill
    assert split_budget(5, [2, 1], 1.0) == [2, 1]  # clamped to what exists
    for rho in (0.1, 0.25, 0.3, 0.5, 0.77):
        for sizes in ([196, 196], [196, 392], [196, 784], [16, 32]):
            k = round(rho * sum(sizes))
            parts = split_budget(k, sizes, rho)
            assert sum(parts) == k and all(0 <= p <= n for p, n in zip(parts, sizes))


@pytest.mark.parametrize("name", COMPARISON)
@pytest.mark.parametrize("n_w,n_h", TILINGS)
@pytest.mark.parametrize("rho", [0.3, 0.5])
def test_structural_kept_and_countable_budget(name, n_w, n_h, rho):
    image = record(n_w, n_h)
    ctx = context(image)
    make_method(name, K, rho).select_image(ctx, image)
    kept, fixed = set(image.kept), structural(image)
    countable = image.length - len(fixed)
    assert countable == 196 * (1 + n_w * n_h)
    assert len(kept) == len(image.kept) and all(image.start <= i < image.end for i in kept)
    assert fixed <= kept
    k = round(rho * countable)
    if name.endswith("+ivc"):
        cos, sin = ivc_sets(ctx, image, DEEPSEEK_SETTINGS.ivc_fraction, DEEPSEEK_SETTINGS.ivc_fraction_by_role)
        ivc = set((torch.cat([cos, sin]) + image.start).tolist())
        assert ivc <= kept and sorted(image.ivc_cos) == sorted((cos + image.start).tolist())
        assert len(kept - fixed) == max(k, len(ivc - fixed))
    else:
        assert len(kept - fixed) == k


def test_ivc_sets_use_the_row_fraction_on_local_rows():
    """+IVC takes the family's own IVC: 10 % of the 210 global positions, round(0.15 W) per local row and axis."""
    image = record(2, 1)  # W = 29: 4 per row and axis at 0.15 (the generic 0.10 would give 3)
    ctx = context(image)
    method = make_method("random+ivc", K, 0.5)
    method.select_image(ctx, image)
    span = image.layout
    for r in range(14):
        row = set(range(span.local_index(r, 0), span.local_index(r, 0) + span.local_width))
        assert len(row & set(image.ivc_cos)) == 4 and len(row & set(image.ivc_sin)) == 4
    glob = set(range(span.global_start, span.separator))
    assert len(glob & set(image.ivc_cos)) == 21 and len(glob & set(image.ivc_sin)) == 21


def test_fastv_ranks_countable_tokens_only():
    """Make the newlines the most attended keys: FastV still keeps the top-k of the countable tokens."""
    image = record(1, 1)
    ctx = context(image)
    q, k = ctx.extras[CAPTURE_KEY]
    nl = torch.tensor(sorted(structural(image)))
    k[:, :, nl] = q[:, :, -1:].expand(-1, -1, nl.numel(), -1) * 5
    method = make_method("fastv", K, 0.5)
    method.select_image(ctx, image)
    scores = method.scores(ctx, image)
    fixed = [i - image.start for i in nl.tolist()]
    assert set(torch.argsort(scores, descending=True)[:5].tolist()) <= set(fixed)  # the test really steers them
    countable = [i for i in range(image.length) if i not in fixed]
    order = sorted(countable, key=lambda i: (-float(scores[i]), i))[:196]
    assert set(image.kept) == {i + image.start for i in order} | structural(image)


def test_grid_points_written_out_for_a_small_layout():
    """g = 4, 2x1 tiling, rho = 0.3: 48 countable tokens, k = 14 = 5 global + 9 local.

    span-relative layout: global rows at 5i + j (newline j = 4), separator 20, local rows at 21 + 9r + c (newline c = 8).
    global lattice(4, 4, 5): h' = 2, w' = 2 -> cells 5, 7, 13, 15, plus rest rank 6 = cell 8.
    local lattice(4, 8, 9): h' = 2, w' = 4 -> rows {1, 3} x cols {1, 3, 5, 7}, plus rest rank 12 = cell 16 (row 2, col 0).
    """
    image = record(2, 1, start=3, g=4)
    assert image.length == 57
    make_method("grid", K, 0.3).select_image(context(image), image)
    glob = [6, 8, 10, 16, 18]  # (1,1) (1,3) (2,0) (3,1) (3,3)
    local = [31, 33, 35, 37, 39, 49, 51, 53, 55]  # (1,1) (1,3) (1,5) (1,7) (2,0) (3,1) (3,3) (3,5) (3,7)
    fixed = [4, 9, 14, 19, 20, 29, 38, 47, 56]  # four global newlines, separator, four local newlines
    assert [i - 3 for i in image.kept] == sorted(glob + local + fixed)
    assert lattice(4, 4, 5, 0.3) == [5, 7, 8, 13, 15]
    assert lattice(4, 8, 9, 0.3) == [9, 11, 13, 15, 16, 25, 27, 29, 31]


def test_grid_on_the_real_layout_spreads_over_both_views():
    image = record(2, 1)
    make_method("grid", K, 0.3).select_image(context(image), image)
    span, kept = image.layout, set(image.kept)
    glob = {span.global_index(i, j) for i in range(14) for j in range(14)}
    local = {span.local_index(r, c) for r in range(14) for c in range(28)}
    assert (len(kept & glob), len(kept & local)) == (59, 117)
    rel = sorted((p - span.global_start) // 15 * 14 + (p - span.global_start) % 15 for p in kept & glob)
    assert rel == lattice(14, 14, 59, 0.3)


# --------------------------------------------------------------------------------------------- through the runtime
STEPS = 3
PROMPT = "<image>\nLocate <|ref|>the red car<|/ref|> in the given image."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2_comparison") / "tiny", "tiny", seed=1)
    model = DeepseekVL2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), DeepseekVL2Processor.from_pretrained(path)


def picture(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def generate(model, batch, method):
    """Greedy generate of STEPS tokens under ``method``; the cache is read from the top-level forward's kwargs."""
    caches = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: caches.append(kw.get("past_key_values")),
                                           with_kwargs=True)
    try:
        with torch.no_grad(), ivcprune.prune(model, method) as trace:
            model.generate(**batch, max_new_tokens=STEPS, eos_token_id=-1, pad_token_id=0)
    finally:
        hook.remove()
    return caches[0], trace.last


@pytest.mark.parametrize("name,size,tiling", [("fastv", (384, 384), (1, 1)), ("random", (768, 384), (2, 1)),
                                              ("grid", (768, 384), (2, 1)), ("grid+ivc", (384, 384), (1, 1))])
def test_runtime_cache_and_kept_structure(tiny, name, size, tiling):
    model, proc = tiny
    batch = proc(prompts=PROMPT, images=[picture(*size, seed=3)])
    cache, sel = generate(model, batch, make_method(name, K, 0.5))
    image = sel.images[0][0]
    assert sel.pruned and sel.method == name and image.grid == tiling
    kept, fixed = set(image.kept), structural(image)
    assert fixed <= kept
    k = round(0.5 * (image.length - len(fixed)))
    if name.endswith("+ivc"):
        assert len(kept - fixed) == max(k, len(set(image.ivc) - fixed)) and set(image.ivc) <= kept
    else:
        assert len(kept - fixed) == k
    assert sel.max_kept == sel.valid_length[0] - image.length + len(kept) < sel.prompt_length
    assert sel.kept[0] == sorted(set(range(sel.prompt_length)) - set(range(image.start, image.end)) | kept)
    assert [layer.keys.shape[2] for layer in cache.layers] == [sel.max_kept + STEPS - 1] * len(cache.layers)
