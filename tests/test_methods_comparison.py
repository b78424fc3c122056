"""DART, DivPrune, CDPruner and PDrop: their selection rules on hand-made tensors (expected index sets written out,
greedy steps checked by brute force), the K = 0 and multi-stage runtime records, and where the tools pick them up.
The runtime invariants of every family x method x backend are in test_runtime_matrix.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import ivcprune
from ivcprune.core.selection import ImageRecord
from ivcprune.methods import make_method, method_names, selects_at, variant_suffixes
from ivcprune.methods.base import SampleContext
from ivcprune.methods.cdpruner import conditional_kernel, greedy_map
from ivcprune.methods.dart import duplication_fill
from ivcprune.methods.divprune import cosine_distance, max_min_greedy
from ivcprune.methods.pdrop import PDrop, default_layers, image_fraction, solve_ratio
from ivcprune.testing import make_image
import invariants as inv
from cases import PROMPTS, case


def unit(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)


# --- DivPrune: greedy max-min --------------------------------------------------------------------------------------
def test_divprune_greedy_max_min_by_hand():
    # tokens at 0, 10, 90, 180, 185 degrees; d = 1 - cos
    dist = cosine_distance(unit([0, 10, 90, 180, 185]))
    # step 1: nearest-other distances 0.015, 0.015, 0.826 (90 vs 10), 0.004, 0.004 -> token 2
    # step 2: distance to {2}: 1, 0.826, -, 1, 1.087 -> token 4; step 3: min to {2, 4}: 1, 0.826, -, 0.004 -> token 0
    # step 4: min to {2, 4, 0}: token 1 0.015, token 3 0.004 -> token 1
    assert max_min_greedy(dist, torch.arange(5), 5) == [2, 4, 0, 1, 3]
    assert max_min_greedy(dist, torch.arange(5), 2) == [2, 4]
    # seeded with token 0 (the IVC set of "+ivc"): farthest from 0 is 180 (token 3, d = 2), then 90 (token 2)
    assert max_min_greedy(dist, torch.tensor([1, 2, 3, 4]), 2, seeds=torch.tensor([0])) == [3, 2]


def test_divprune_each_step_maximises_the_min_distance_brute_force():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 4, generator=g, dtype=torch.float64)
    dist = cosine_distance(feats)
    order = max_min_greedy(dist, torch.arange(9), 6)
    first_scores = [min(float(dist[i, j]) for j in range(9) if j != i) for i in range(9)]
    assert order[0] == max(range(9), key=lambda i: (first_scores[i], -i))
    for step in range(1, 6):
        chosen = order[:step]
        rest = [i for i in range(9) if i not in chosen]
        best = max(rest, key=lambda i: (min(float(dist[i, j]) for j in chosen), -i))
        assert order[step] == best


# --- CDPruner: conditional kernel and DPP greedy MAP ----------------------------------------------------------------
def test_cdpruner_kernel_and_greedy_map_by_hand():
    visual = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    kernel, relevance = conditional_kernel(visual, text, theta=0.5)
    # relevance: cos to the text 1, ~1, 0 -> min-max [1, ~1, 0]; alpha = 0.5 / (2 * 0.5) = 0.5; q = exp(0.5 r)
    assert torch.allclose(relevance, torch.tensor([1.0, 0.99995, 0.0], dtype=torch.float64), atol=1e-4)
    assert math.isclose(float(kernel[0, 0]), math.e, rel_tol=1e-12)  # q_0^2 = exp(1)
    assert math.isclose(float(kernel[2, 2]), 1.0, rel_tol=1e-12)
    # step 1: the largest L_ii (token 0); step 2: token 1 nearly duplicates token 0, token 2 is orthogonal -> 2
    assert greedy_map(kernel, torch.arange(3), 3) == [0, 2, 1]
    # conditioned on token 0 (the IVC set of "+ivc"): token 2 first
    assert greedy_map(kernel, torch.tensor([1, 2]), 1, given=torch.tensor([0])) == [2]


def test_cdpruner_greedy_map_maximises_the_determinant_brute_force():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(8, 6, generator=g, dtype=torch.float64)
    kernel, _ = conditional_kernel(feats[:6], feats[6:], theta=0.5)
    order = greedy_map(kernel, torch.arange(6), 5)
    for step in range(5):
        chosen = order[:step]
        rest = [j for j in range(6) if j not in chosen]
        dets = {j: float(torch.linalg.det(kernel[chosen + [j]][:, chosen + [j]])) for j in rest}
        assert order[step] == max(rest, key=lambda j: (dets[j], -j))
    # conditioned on a given token, each step maximises det(L_{given + chosen + j})
    cond = greedy_map(kernel, torch.tensor([0, 1, 2, 4, 5]), 3, given=torch.tensor([3]))
    for step in range(3):
        chosen = [3] + cond[:step]
        rest = [j for j in (0, 1, 2, 4, 5) if j not in chosen]
        best = max(rest, key=lambda j: (float(torch.linalg.det(kernel[chosen + [j]][:, chosen + [j]])), -j))
        assert cond[step] == best


def test_cdpruner_fills_by_relevance_once_the_kernel_is_exhausted():
    visual = unit([0, 0, 0, 0])  # rank 1: after one pick every gain is 0
    kernel, relevance = conditional_kernel(visual, unit([0]), theta=0.5)
    fallback = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    assert greedy_map(kernel, torch.arange(4), 3, fallback=fallback) == [0, 1, 2]


# --- DART: de-duplication against pivots ----------------------------------------------------------------------------
def test_dart_duplication_fill_by_hand():
    feats = unit([0, 5, 90, 95, 180, 270])
    pivots = [feats[0], unit([90])[0]]  # image pivot 0, one text pivot at 90 degrees
    # n = 4: pivot 0 kept; 3 left over 2 pivots -> quotas 2 and 1. Pivot 0 takes the least similar to 0 degrees:
    # 180 (token 4, cos -1), then 95 (token 3, cos -0.09); the text pivot takes the least similar to 90 of
    # {1, 2, 5}: 270 (token 5, cos -1)
    assert duplication_fill(feats, pivots, [0], list(range(6)), 4) == [0, 4, 3, 5]
    assert duplication_fill(feats, pivots, [0], list(range(6)), 1) == [0]
    # candidates exclude tokens 4 and 5 (e.g. IVC): pivot 0 -> 3 (95), 2 (90); text pivot -> 1 (5 degrees)
    assert duplication_fill(feats, pivots, [0], [0, 1, 2, 3], 4) == [0, 3, 2, 1]


# --- PDrop: schedule, lambda from the retention, stage ranking ------------------------------------------------------
def test_pdrop_schedule_and_ratio_from_retention():
    assert default_layers(32) == [8, 16, 24] and default_layers(28) == [7, 14, 21] and default_layers(4) == [1, 2, 3]
    # paper setting: lambda 0.5 at 8/16/24 of 32 -> (8 + 8 * (0.5 + 0.25 + 0.125)) / 32 = 0.46875
    assert image_fraction([8, 16, 24], 32, 0.5) == 0.46875
    assert math.isclose(solve_ratio([8, 16, 24], 32, 0.46875), 0.5, abs_tol=1e-12)
    lam = solve_ratio([8, 16, 24], 32, 0.5)
    assert math.isclose(image_fraction([8, 16, 24], 32, lam), 0.5, abs_tol=1e-12) and 0.5 < lam < 0.6
    with pytest.raises(ValueError, match="below K1"):
        solve_ratio([8, 16, 24], 32, 0.2)
    with pytest.raises(ValueError, match="layers="):
        PDrop(layer=4)
    with pytest.raises(ValueError, match="increasing"):
        PDrop(layers=(4, 2))


class _Plain:
    """The one adapter service a stage fill reads: no structural tokens."""

    @staticmethod
    def structural_tokens(image):
        return torch.empty(0, dtype=torch.long)


def test_pdrop_stage_ranks_by_the_last_rows_attention_on_the_narrowed_layout():
    # prompt of 6: text 0, image 1..4, text 5; stage 0 dropped position 4; the layout has one slot first
    image = ImageRecord(start=1, length=4)
    rows = torch.tensor([-1, 0, 1, 2, 3, 5])
    key = torch.tensor([0.0, 0.0, 3.0, 1.0, 2.0, 0.0]).view(1, 6, 1)  # H_kv = 1, D = 1
    query = torch.ones(1, 6, 1)
    ctx = SampleContext(index=0, valid=torch.ones(6, dtype=torch.bool), positions=torch.arange(6)[None],
                        images=[image], inv_freq=torch.ones(1), settings=None, adapter=_Plain(),
                        extras={"fastv_qk@1": (query[None], key[None])}, rows=rows, stage=1)
    method = PDrop(ratio=0.5)
    scores = method.scores(ctx, torch.tensor([1, 2, 3]))
    expected = torch.tensor([math.e ** 3, math.e, math.e ** 2]) / (2 + math.e ** 3 + math.e + math.e ** 2)
    assert torch.allclose(scores, expected)  # softmax over the 5 real rows, the slot masked
    assert method.stage_fill(ctx, image, [1, 2, 3], set(), 2) == [1, 3]
    assert method.stage_fill(ctx, image, [1, 2, 3], {1}, 1) == [3]


# --- registration and tools -----------------------------------------------------------------------------------------
def test_registry_names_suffixes_and_selection_points():
    names = method_names()
    for name, suffix in [("dart", "_DART"), ("divprune", "_DivPrune"), ("cdpruner", "_CDPruner"), ("pdrop", "_PDrop")]:
        assert name in names and f"{name}+ivc" in names
        assert variant_suffixes()[name] == suffix and variant_suffixes()[f"{name}+ivc"] == suffix + "_IVC"
    assert [selects_at(n) for n in ("dart", "divprune", "cdpruner+ivc", "pdrop+ivc")] == \
        ["layer", "pre-llm", "pre-llm", "stages"]
    with pytest.raises(ValueError, match="K = 0"):
        make_method("divprune", layer=2)


def test_registry_variants_pass_k_only_to_single_layer_methods():
    from ivcprune.eval.registry import make_method as from_pruning, method_variant

    entry = {"pruning": {"method": "ivcp", "layer": 16, "retention": 0.5}}
    assert method_variant(entry, "dart")["pruning"]["layer"] == 16
    for name in ("divprune", "cdpruner+ivc", "pdrop"):
        variant = method_variant(entry, name)
        assert variant["pruning"]["layer"] is None
        method = from_pruning(variant["pruning"])
        assert getattr(method, "method", method).retention == 0.5 and method.selects_at != "layer"


def test_bench_ideal_flops_follow_the_stages():
    from ivcprune.tools.benchkit import prefill_flops

    fm = {"c1": 10, "c2": 1, "num_layers": 8}
    def f(n):
        return 10 * n + n * n

    one = prefill_flops(fm, 100, 60, 2)
    assert one["pruned"] == 2 * f(100) + 6 * f(60)
    staged = prefill_flops(fm, 100, 60, 2, stages=[(4, 40), (6, 30)])
    assert staged["pruned"] == 2 * f(100) + 2 * f(60) + 2 * f(40) + 2 * f(30)
    assert staged["full"] == 8 * f(100)


# --- through the runtime (LLaVA tiny model, sdpa) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava():
    c = case("llava")
    model, proc = c.load("sdpa")
    return c, model, c.inputs(proc, make_image(*c.image_size, seed=1), PROMPTS["llava"])


def test_pre_llm_selection_sees_the_input_embeddings(llava):
    c, model, inputs = llava
    with torch.no_grad(), ivcprune.prune(model, make_method("divprune", None, 0.5)) as trace:
        model(**inputs)
    sel = trace.last
    im = sel.images[0][0]
    assert sel.layer == 0 and len(im.kept) == round(0.5 * im.length)
    emb, _ = inv.embed_via_hook(model, inputs)
    dist = cosine_distance(emb[0, im.start:im.end].float())
    expected = max_min_greedy(dist, torch.arange(im.length), round(0.5 * im.length))
    assert im.kept == sorted(i + im.start for i in expected)


def test_pre_llm_plus_ivc_keeps_the_ivc_positions_of_the_position_ids(llava):
    c, model, inputs = llava
    with torch.no_grad(), ivcprune.prune(model, make_method("cdpruner+ivc", None, 0.5)) as t0:
        model(**inputs)
    with torch.no_grad(), ivcprune.prune(model, make_method("dart+ivc", 2, 0.5)) as t2:
        model(**inputs)
    a, b = t0.last.images[0][0], t2.last.images[0][0]
    assert a.ivc and a.ivc == b.ivc  # position ids, not the layer, decide the IVC tokens
    assert set(a.ivc) <= set(a.kept) and len(a.kept) == round(0.5 * a.length)


def test_multi_stage_record_and_accounting(llava):
    c, model, inputs = llava
    with torch.no_grad(), ivcprune.prune(model, make_method("pdrop+ivc", None, 0.5)) as trace:
        out = model(**inputs, use_cache=True)
    sel = trace.last
    assert [layer for layer, _ in sel.schedule] == [1, 2, 3]
    im = sel.images[0][0]
    lam = solve_ratio([1, 2, 3], 4, 0.5)
    previous = im.kept
    for j, st in enumerate(sel.stages, start=2):
        now = st.image_kept[0][0]
        assert set(now) <= set(previous) and set(im.ivc) <= set(now)  # narrowing, IVC survives every stage
        assert len(now) == max(round(lam ** j * im.length), len(im.ivc))
        previous = now
    assert inv.cache_lengths(out.past_key_values) == sel.cache_counts(0)
    beta = sel.kv_bytes_per_layer
    assert len(beta) == 4 and sel.kv_bytes_kept[0] == sum(n * x for n, x in zip(sel.cache_counts(0), beta))
    summary = sel.summary()
    assert [s["layer"] for s in summary["stages"]] == [1, 2, 3]
    # realised FLOP-equivalent image fraction is the requested retention up to the per-stage rounding
    counts = [len(im.kept)] + [len(st.image_kept[0][0]) for st in sel.stages]
    realised = (1 * im.length + sum(counts)) / (4 * im.length)
    assert abs(realised - 0.5) < 2 / im.length


# --- DeepSeek-VL2 (its own model and generate loop): the same invariants for the new methods -----------------------
NEW_METHODS = [f"{m}{s}" for m in ("dart", "divprune", "cdpruner", "pdrop") for s in ("", "+ivc")]
DS_PROMPT = "<image>\nLocate <|ref|>the red car<|/ref|> in the given image."
DS_STEPS = 3


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor, make_tiny_deepseek_vl2

    path = make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2_cmp") / "tiny", "tiny", seed=1)
    models = {a: DeepseekVL2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation=a).eval()
              for a in ("eager", "sdpa")}
    return models, DeepseekVL2Processor.from_pretrained(path)


def _picture(w, h, seed):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def _ds_generate(model, batch, method=None):
    logits = []
    hook = model.register_forward_hook(lambda m, a, kw, out: logits.append(out.logits[:, -1].clone()), with_kwargs=True)
    try:
        with torch.no_grad(), (ivcprune.prune(model, method) if method is not None else _null()) as trace:
            seq = model.generate(**batch, max_new_tokens=DS_STEPS, eos_token_id=-1, pad_token_id=0, use_cache=True)
    finally:
        hook.remove()
    return seq, logits, trace


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _ds_embed(model, batch):
    """DeepSeek-VL2's prompt embeddings and (1, S) position ids, for the generic oracle of tests/invariants.py."""
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(batch["input_ids"], batch["images"], batch["images_seq_mask"],
                                             batch["images_spatial_crop"])
    return embeds, torch.arange(embeds.shape[1])[None]


DS_CASE = inv.Case(family="deepseek_vl2", load=None, inputs=None, embed=_ds_embed)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", NEW_METHODS)
def test_deepseek_vl2_invariants(deepseek, name, attn):
    models, proc = deepseek
    model = models[attn]
    layer = 1 if selects_at(name) == "layer" else None
    batch = proc(prompts=DS_PROMPT, images=[_picture(384, 384, seed=1)])
    seq, logits, _ = _ds_generate(model, batch)
    seq1, logits1, trace1 = _ds_generate(model, batch, make_method(name, layer, 1.0))
    assert torch.equal(seq, seq1) and all(torch.equal(a, b) for a, b in zip(logits, logits1))
    assert trace1.last.pruned is False
    with torch.no_grad(), ivcprune.prune(model, make_method(name, layer, 0.5)) as trace:
        out = model(**batch, use_cache=True)
    sel = trace.last
    assert sel.pruned and sel.kept_image_tokens[0] < sel.image_tokens[0]
    assert inv.cache_lengths(out.past_key_values) == sel.cache_counts(0)
    assert out.logits.shape[1] == len(sel.final_kept[0])
    seq2, logits2, trace2 = _ds_generate(model, batch, make_method(name, layer, 0.5))
    s = batch["input_ids"].shape[1]
    sel2 = trace2.last
    ref = inv.oracle_logits(DS_CASE, model, batch, sel2.kept[0], seq2[0, s:s + DS_STEPS - 1].tolist(), sel2.layer,
                            [(st.layer, st.kept[0]) for st in sel2.stages])
    for step, got in enumerate(logits2):
        torch.testing.assert_close(got[0], ref[step], atol=1e-5, rtol=0, msg=f"step {step}")
    # a left-padded batch gives the first sample its alone keep sets (every stage) and logits
    both = proc(prompts=[DS_PROMPT, "<image>\nWhat is in the picture?"],
                images=[[_picture(384, 384, seed=1)], [_picture(768, 384, seed=3)]])
    _, logits_b, trace_b = _ds_generate(model, both, make_method(name, layer, 0.5))
    offset = both["input_ids"].shape[1] - s
    for (_, kb), (_, ka) in zip(trace_b.last.schedule, trace2.last.schedule, strict=True):
        assert [i - offset for i in kb[0]] == ka[0]
    for lb, la in zip(logits_b, logits2):
        torch.testing.assert_close(lb[0], la[0], atol=1e-5, rtol=0)


def test_visualize_draws_one_selection_column_per_stage():
    from PIL import Image

    from ivcprune.tools import visualize as vis

    c = case("qwen2_5_vl")
    model, proc = c.load("sdpa")
    gray = (128, 128, 128)
    rendering, sel = vis.visualize(model, proc, Image.new("RGB", (300, 200), gray), "Where is the red circle?",
                                   make_method("pdrop", None, 0.5))
    record = sel.images[0][0]
    assert len(sel.stages) == 2
    for col, kept in enumerate([record.kept] + [st.image_kept[0][0] for st in sel.stages]):
        for row, panel in enumerate(rendering.panels):
            for tok, box in panel.cells.items():
                x, y = rendering.placements[(row, col)]
                got = rendering.image.getpixel((x + (box[0] + box[2]) // 2, y + (box[1] + box[3]) // 2))
                want = gray if tok in kept else tuple(int(v * vis.DIM) for v in gray)
                assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (col, tok)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_several_images_budgeted_separately_and_oracle(name):
    """Two images in one prompt: each image budgeted on its own at every stage; cached decode equals the oracle."""
    c = case("qwen2_5_vl")
    model, proc = c.load("eager")
    two = c.inputs(proc, [[make_image(*c.image_size, seed=1), make_image(*c.other_size, seed=2)]],
                   [PROMPTS["qwen2_5_vl"]])
    layer = 2 if selects_at(name) == "layer" else None
    make = lambda r=None: make_method(name, layer, 0.5 if r is None else r)  # noqa: E731
    seq, scores, cache, trace = inv.greedy(model, two, 3, make())
    sel = trace.last
    images = sel.images[0]
    assert len(images) == 2 and images[0].length != images[1].length
    for i, im in enumerate(images):
        assert all(im.start <= p < im.end for p in im.kept)
        if not name.startswith("pdrop"):
            assert len(im.kept) == max(round(0.5 * im.length), len(im.ivc))
        for st in sel.stages:
            assert all(im.start <= p < im.end for p in st.image_kept[0][i])
    assert inv.cache_lengths(cache) == [n + 2 for n in sel.cache_counts(0)]
    inv.check_oracle(c, model, two, make, sel.layer, 3)


def test_sampled_generate_and_use_cache_false_with_stages():
    c = case("llava")
    model, proc = c.load("sdpa")
    inputs = c.inputs(proc, make_image(*c.image_size, seed=1), PROMPTS["llava"])
    torch.manual_seed(0)
    with torch.no_grad(), ivcprune.prune(model, make_method("pdrop", None, 0.5)) as trace:
        out = model.generate(**inputs, max_new_tokens=4, do_sample=True, top_k=5)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 and len(trace.selections) == 1
    inv.check_use_cache_false(model, inputs, lambda r=None: make_method("pdrop", None, 0.5))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
@pytest.mark.parametrize("name", ["dart", "divprune", "cdpruner+ivc", "pdrop", "pdrop+ivc"])
def test_hand_written_decode_loop(family, name):
    """A loop passing the full 2-D mask and no position ids: each stage group's mask and the original positions."""
    c = case(family)
    model, proc = c.load("eager")
    inputs = c.inputs(proc, make_image(*c.image_size, seed=1), PROMPTS[family])
    layer = 2 if selects_at(name) == "layer" else None
    inv.check_handwritten_decode(model, inputs, lambda r=None: make_method(name, layer, 0.5), 4)
