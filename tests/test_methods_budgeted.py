"""Baselines of docs/ALGORITHM.md §9 (FastV, random, uniform grid, X + IVC): hand-made tensors, then through the
runtime."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import ivcprune
from ivcprune.core.ranking import top_k
from ivcprune.core.rope import ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.methods import make_method, method_names, selects_at
from ivcprune.methods.base import SampleContext
from ivcprune.methods.budgeted import BudgetedMethod
from ivcprune.methods.fastv import attention_received
from ivcprune.methods.grid import even, lattice
from ivcprune.methods.random import RandomPrune
from ivcprune.models.base import FamilyAdapter
from ivcprune.methods.ivcp import family_defaults

QWEN_SETTINGS = family_defaults("qwen2_5_vl")
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
from invariants import cache_lengths, greedy

K, STEPS = 2, 3
PROMPT = "Locate the red circle on the left and output the bbox coordinates in JSON format."
# the budgeted comparison methods that select once at layer K (pre-LLM and multi-stage ones:
# test_methods_comparison.py and the matrix; the ivc_removed ablation has no budget: test_pocket_quality.py)
COMPARISON = [m for m in method_names() if m not in ("ivcp", "ivc_removed") and selects_at(m) == "layer"]
DETERMINISTIC = [m for m in COMPARISON if not m.startswith("random")]


# --------------------------------------------------------------------------------------------- hand-made tensors
def test_even_is_the_documented_formula():
    assert even(10, 3) == [1, 5, 8]
    assert even(7, 7) == list(range(7))
    assert even(5, 0) == []
    for n in range(1, 30):
        for m in range(0, n + 1):
            got = even(n, m)
            assert got == [math.floor((i + 0.5) * n / m) for i in range(m)]
            assert len(set(got)) == m


@pytest.mark.parametrize("rows,cols", [(24, 24), (6, 5), (1, 9), (11, 15), (3, 40)])
@pytest.mark.parametrize("rho", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_lattice_has_exactly_k_distinct_tokens(rows, cols, rho):
    k = round(rho * rows * cols)
    points = lattice(rows, cols, k, rho)
    assert len(points) == len(set(points)) == k
    assert all(0 <= p < rows * cols for p in points)


def test_lattice_worked_example_llava_grid():
    # 24x24 at rho 0.5: h' = round(16.97) = 17, w' = round(288 / 17) = 17 -> 289 points, one dropped (rank 144)
    points = lattice(24, 24, 288, 0.5)
    rows, cols = even(24, 17), even(24, 17)
    full = [r * 24 + c for r in rows for c in cols]
    assert points == [p for i, p in enumerate(full) if i != 144]


def test_attention_received_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, s, d = 4, 2, 9, 8
    q = torch.randn(heads, s, d, generator=gen)
    k = torch.randn(kv_heads, s, d, generator=gen)
    valid = torch.tensor([False, True, True, True, True, True, True, True, True])  # one left pad
    rows = torch.tensor([5, 8])
    got = attention_received(q, k, rows, valid)
    want = torch.zeros(s)
    for r in rows.tolist():
        for h in range(heads):
            keys = [j for j in range(s) if valid[j] and j <= r]
            logits = torch.stack([q[h, r] @ k[h // 2, j] / math.sqrt(d) for j in keys])
            p = logits.softmax(0)
            for j, pj in zip(keys, p):
                want[j] += pj / (heads * len(rows))
    assert torch.allclose(got, want, atol=1e-6)
    assert got[0] == 0 and float(got.sum()) == pytest.approx(1.0, abs=1e-6)


class _StubAdapter(FamilyAdapter):
    """A model-less adapter: the FamilyAdapter defaults (one IVC group, no structure) under Qwen's family name."""

    family = "qwen2_5_vl"

    def __init__(self):
        super().__init__(model=None)


def _ctx(images, length=40, index=0):
    pos = torch.arange(length)[None].expand(3, -1).clone()
    return SampleContext(index=index, valid=torch.ones(length, dtype=torch.bool), positions=pos, images=images,
                         inv_freq=ivcprune.core.rope.default_inv_freq(1e6, 16), settings=QWEN_SETTINGS,
                         adapter=_StubAdapter())


def test_random_depends_only_on_seed_and_image_index():
    a, b = ImageRecord(start=2, length=20), ImageRecord(start=24, length=10)
    m = RandomPrune(layer=K, retention=0.5, seed=3)
    m.select_image(_ctx([a, b]), a)
    alone = ImageRecord(start=2, length=20)
    m.select_image(_ctx([alone]), alone)
    assert a.kept == alone.kept and len(a.kept) == 10 and all(2 <= i < 22 for i in a.kept)
    again = ImageRecord(start=2, length=20)
    m.select_image(_ctx([again], index=1), again)
    assert again.kept == a.kept  # another batch position draws as alone: batch-invariant
    second = ImageRecord(start=24, length=20)
    m.select_image(_ctx([ImageRecord(start=2, length=20), second], length=50), second)
    assert second.kept != [i + 22 for i in a.kept]  # the second image of a sample draws anew
    other = ImageRecord(start=2, length=20)
    RandomPrune(layer=K, retention=0.5, seed=4).select_image(_ctx([other]), other)
    assert other.kept != a.kept


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
def test_with_ivc_puts_ivc_first_then_the_inner_ranking(rho):
    class Reverse(BudgetedMethod):
        name = "reverse"

        def ranking(self, ctx, image):
            return torch.arange(image.length - 1, -1, -1)

    image = ImageRecord(start=5, length=30)
    ctx = _ctx([image])
    ivcprune.WithIVC(Reverse(layer=K, retention=rho)).select_image(ctx, image)
    c, s = ivc_scores(ctx.positions[:, 5:35], ctx.inv_freq)
    cos, sin = ivc_select(c, s, None, 0.1, 0.1)
    ivc = set((torch.cat([cos, sin]) + 5).tolist())
    k = round(rho * 30)
    assert ivc <= set(image.kept)
    assert len(image.kept) == max(k, len(ivc))
    fill = [i for i in range(34, 4, -1) if i not in ivc][:max(0, k - len(ivc))]
    assert set(image.kept) == ivc | set(fill)
    assert sorted(image.ivc_cos) == sorted((cos + 5).tolist())


def test_make_method_names():
    assert isinstance(make_method("ivcp", 3, 0.5), ivcprune.IVCPrune)
    assert isinstance(make_method("fastv", 3, 0.5), ivcprune.FastV)
    assert isinstance(make_method("grid", 3, 0.5), ivcprune.UniformGrid)
    wrapped = make_method("random+ivc", 3, 0.25)
    assert isinstance(wrapped, ivcprune.WithIVC) and wrapped.layer == 3 and wrapped.label() == "random+ivc"
    with pytest.raises(ValueError):
        make_method("pdrop", 3, 0.5)
    with pytest.raises(ValueError):
        make_method("fastv", 3, 1.5)


# --------------------------------------------------------------------------------------------- through the runtime
_MODELS = {}


def load(attn="sdpa"):
    if attn not in _MODELS:
        path = tiny_checkpoint("qwen2_5_vl", max_pixels=64 * 28 * 28)
        _MODELS[attn] = (Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation=attn).eval(),
                         load_processor(path))
    return _MODELS[attn]


@pytest.mark.parametrize("name", COMPARISON)
def test_cache_lengths_and_budget(name):
    model, proc = load()
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)
    _, _, cache, trace = greedy(model, inputs, STEPS, make_method(name, K, 0.5))
    sel = trace.last
    n_image = sel.image_tokens[0]
    kept_image = sel.kept_image_tokens[0]
    if name.endswith("+ivc"):
        assert kept_image == max(round(0.5 * n_image), len(sel.ivc[0]))
    else:
        assert kept_image == round(0.5 * n_image)
    assert sel.max_kept == sel.valid_length[0] - n_image + kept_image
    assert cache_lengths(cache) == [sel.max_kept + STEPS - 1] * model.config.text_config.num_hidden_layers
    assert sel.method == name


@pytest.mark.parametrize("name", COMPARISON)
def test_identity_at_retention_one(name):
    model, proc = load()
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)
    seq, scores, _, _ = greedy(model, inputs, STEPS)
    seq1, scores1, _, trace = greedy(model, inputs, STEPS, make_method(name, K, 1.0))
    assert torch.equal(seq, seq1) and all(torch.equal(a, b) for a, b in zip(scores, scores1))
    assert trace.last.pruned is False


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_padded_batch_equals_each_sample_alone(name):
    model, proc = load()
    images = [make_image(168, 140, seed=1), make_image(112, 196, seed=2)]
    texts = [PROMPT, "What is in the picture?"]
    batch = tiny_inputs("qwen2_5_vl", proc, images, texts)
    seq_b, scores_b, _, tr_b = greedy(model, batch, STEPS, make_method(name, K, 0.5))
    width = batch["input_ids"].shape[1]
    for b in range(2):
        alone = tiny_inputs("qwen2_5_vl", proc, images[b], texts[b])
        seq_a, scores_a, _, tr_a = greedy(model, alone, STEPS, make_method(name, K, 0.5))
        offset = width - alone["input_ids"].shape[1]
        assert [i - offset for i in tr_b.last.kept[b]] == tr_a.last.kept[0]
        assert seq_b[b, width:].tolist() == seq_a[0, alone["input_ids"].shape[1]:].tolist()
        for sb, sa in zip(scores_b, scores_a):
            ok = torch.isfinite(sa[0])
            assert torch.allclose(sb[b][ok], sa[0][ok], atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fastv_equals_attention_weights_of_layer_k_minus_1(attn):
    """The tapped q/k give the same scores as eager attention probabilities (output_attentions, test only)."""
    model, proc = load(attn)
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    with torch.no_grad(), ivcprune.prune(model, ivcprune.FastV(layer=K, retention=0.5)) as trace:
        model(**inputs)
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before  # the tap is gone
    image = trace.last.images[0][0]
    eager, _ = load("eager")
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions[K - 1][0]  # (H, S, S)
    rows = torch.arange(image.end + QWEN_SETTINGS.query_offset, inputs["input_ids"].shape[1])
    a = att[:, rows].mean(dim=(0, 1))[image.start:image.end]
    want = sorted((top_k(a, round(0.5 * image.length)) + image.start).tolist())
    assert image.kept == want


def test_grid_keeps_an_even_lattice_on_the_merged_grid():
    model, proc = load()
    inputs = tiny_inputs("qwen2_5_vl", proc, make_image(168, 140, seed=1), PROMPT)  # 5 x 6 merged grid
    _, _, _, trace = greedy(model, inputs, 1, ivcprune.UniformGrid(layer=K, retention=0.5))
    image = trace.last.images[0][0]
    rel = [i - image.start for i in image.kept]
    assert rel == lattice(5, 6, 15, 0.5)


def test_a_family_without_default_budget_needs_an_explicit_retention():
    from dataclasses import replace

    ctx = _ctx([ImageRecord(start=2, length=20)])
    ctx.settings = replace(QWEN_SETTINGS, family="llava", retention=None)
    with pytest.raises(ValueError, match="pass retention"):
        ivcprune.UniformGrid(layer=K).select_image(ctx, ctx.images[0])
    image = ctx.images[0]
    ivcprune.UniformGrid(layer=K, retention=0.5).select_image(ctx, image)
    assert len(image.kept) == 10


@pytest.mark.parametrize("name", ["fastv", "grid+ivc"])
def test_comparison_method_without_budget_on_a_union_family_fails_before_any_work(name):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint("llava")).eval()
    with pytest.raises(ValueError, match="no default image-token budget"):
        with ivcprune.prune(model, make_method(name, layer=2)):
            pass
    with ivcprune.prune(model, make_method(name, layer=2, retention=0.5)) as trace:
        assert trace.layer == 2
