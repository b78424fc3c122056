"""Runtime invariants of docs/ALGORITHM.md §7 for DeepSeek-VL2 (tiny MHA and small MLA flavours; eager and sdpa).

DeepSeek-VL2 has its own ``generate`` (no HF scores), so per-step logits and the cache are read with hooks on
the top-level model, and the oracle runs the decoder layers by hand with the model's own rotary module (a
complex ``freqs_cis`` tensor for MLA, a (cos, sin) pair for MHA).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

import ivcprune
from ivcprune.models import get_adapter
from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor, make_tiny_deepseek_vl2
from ivcprune.methods.ivcp import family_defaults
from ivcprune.models.deepseek_vl2.adapter import DeepseekVL2Adapter

K = 2  # of 3 decoder layers: layers 0-1 see the full prompt
STEPS = 4
PROMPT = "<image>\nLocate <|ref|>the red car<|/ref|> in the given image."
OTHER = "<image>\nWhat is in the picture?"
MATRIX = [(f, a) for f in ("tiny", "small") for a in ("eager", "sdpa")]
_MODELS: dict = {}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsvl2_rt")
    return {fl: make_tiny_deepseek_vl2(root / fl, fl, seed=1) for fl in ("tiny", "small", "base")}


@pytest.fixture(scope="module")
def load(ckpts):
    def get(flavour, attn):
        if (flavour, attn) not in _MODELS:
            model = DeepseekVL2ForCausalLM.from_pretrained(ckpts[flavour], torch_dtype=torch.float32,
                                                           attn_implementation=attn)
            _MODELS[flavour, attn] = (model, DeepseekVL2Processor.from_pretrained(ckpts[flavour]))
        return _MODELS[flavour, attn]

    yield get
    _MODELS.clear()


def image(w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def method(retention=None, layer=K):
    return ivcprune.IVCPrune(layer=layer, retention=retention)


def run(model, batch, steps=STEPS, prune_with=None):
    """Greedy generate of exactly ``steps`` tokens, observed through hooks.

    Returns seq, per-step logits, the cache, the trace, the position ids of every text-model call and the kwargs
    that reach layer K at prefill (after the cut: the hook is registered after the pruning hooks).
    """
    rec = {"logits": [], "caches": [], "positions": [], "layer_k": []}
    hooks = [
        model.register_forward_pre_hook(lambda m, a, kw: rec["caches"].append(kw.get("past_key_values")),
                                        with_kwargs=True),
        model.register_forward_hook(lambda m, a, kw, out: rec["logits"].append(out.logits[:, -1].clone()),
                                    with_kwargs=True),
        model.language.model.register_forward_pre_hook(
            lambda m, a, kw: rec["positions"].append(kw["position_ids"].clone()), with_kwargs=True),
    ]
    kwargs = dict(max_new_tokens=steps, eos_token_id=-1, pad_token_id=0)
    try:
        with ivcprune.prune(model, prune_with) if prune_with is not None else contextlib.nullcontext() as trace:
            hooks.append(model.decoder_layers[K].register_forward_pre_hook(
                lambda m, a, kw: rec["layer_k"].append(dict(kw)), with_kwargs=True))
            seq = model.generate(**batch, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return Run(seq, rec["logits"], rec["caches"][0], trace, rec["positions"], rec["layer_k"][0])


@dataclass
class Run:
    seq: torch.Tensor
    logits: list
    cache: object
    trace: object
    positions: list
    layer_k: dict


_RUNS: dict = {}


def shared_run(flavour, model, batch, pruned: bool) -> Run:
    """The matrix prompt's unpruned / pruned generate, run once per (flavour, backend) and reused by the tests."""
    key = (flavour, model.config._attn_implementation, pruned)
    if key not in _RUNS:
        _RUNS[key] = run(model, batch, prune_with=method() if pruned else None)
    return _RUNS[key]


def lengths(cache):
    return [layer.keys.shape[2] for layer in cache.layers]


def tensors(layer):
    return {k: v for k, v in vars(layer).items() if isinstance(v, torch.Tensor) and v.ndim == 4}


@pytest.fixture(params=MATRIX, ids=[f"{f}-{a}" for f, a in MATRIX])
def setup(request, load):
    flavour, attn = request.param
    model, proc = load(flavour, attn)
    return flavour, model, proc, proc(prompts=PROMPT, images=[image(384, 384, seed=1)])


# ---- adapter wiring ----------------------------------------------------------------------------------------------
def test_adapter_registration_defaults_and_values(load):
    import sys

    model, _ = load("small", "eager")
    adapter = get_adapter(model)
    assert isinstance(adapter, DeepseekVL2Adapter) and ivcprune.IVCPrune().family_defaults(adapter).query_offset == 1
    assert adapter.value_module(K - 1) is model.decoder_layers[K - 1].self_attn.kv_b_proj
    cfg = model.config
    assert adapter.inv_freq().numel() == cfg.qk_rope_head_dim // 2  # the rope part only
    out = torch.randn(2, 1, 7, cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim))
    v = adapter.value_heads(out)
    assert v.shape == (2, 7, cfg.num_attention_heads, cfg.v_head_dim)
    assert torch.equal(v[1, 3, 2], out[1, 0, 3].view(cfg.num_attention_heads, -1)[2, cfg.qk_nope_head_dim:])
    tiny, _ = load("tiny", "eager")
    assert get_adapter(tiny).value_module(0) is tiny.decoder_layers[0].self_attn.v_proj
    assert dict(family_defaults("deepseek_vl2").default_layers) == {27: 17, 12: 8, 30: 19}
    assert "ivcprune.models.deepseek_vl2.adapter" in sys.modules


def test_selection_structure(load):
    """Newlines and separator kept, seeds >= 1 among valid global cells, kept image share near 50 %."""
    model, proc = load("small", "eager")
    batch = proc(prompts=PROMPT, images=[image(768, 384, seed=2)])
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        out = model(**batch)
    sel = trace.last
    assert out.logits.shape[1] == sel.max_kept  # a plain forward returns P rows
    im = sel.images[0][0]
    span = im.layout
    kept = set(im.kept)
    assert set(span.newline_positions()) <= kept and span.separator in kept
    assert len(im.seeds) == 1  # max(1, round(0.01 * 112)): 8 of 14 rows are picture (768x384)
    i, j = divmod(im.seeds[0] - span.global_start, 15)
    assert 3 <= i <= 10 and j < 14
    glob = {p for p in kept if p < span.separator}
    assert 105 - 42 <= len(glob - set(span.newline_positions())) <= 105  # fg fills round(0.5*210) - |IVC_g|
    assert 0.4 < len(kept) / im.length < 0.65
    assert sel.kept[0] == sorted(set(range(sel.prompt_length)) - set(range(im.start, im.end)) | kept)


# ---- §7.1 identity -------------------------------------------------------------------------------------------------
def test_identity_at_retention_one(setup):
    flavour, model, _, batch = setup
    ref = shared_run(flavour, model, batch, pruned=False)
    same = run(model, batch, prune_with=method(1.0))
    assert torch.equal(ref.seq, same.seq) and all(torch.equal(a, b) for a, b in zip(ref.logits, same.logits))
    assert same.trace.last.pruned is False
    live = sum(t.shape[1] * t.shape[3] * 4 for l in ref.cache.layers for t in tensors(l).values())
    assert same.trace.last.kv_bytes_per_token == live  # pass-through accounting follows the MLA / MHA layout
    with torch.no_grad():
        plain = model(**batch).logits
        with ivcprune.prune(model, method(1.0)):
            got = model(**batch).logits
    assert torch.equal(got, plain)


# ---- §7.2-3 cache lengths and content (MLA latent included) ---------------------------------------------------------
def test_cache_lengths_and_content(setup):
    flavour, model, _, batch = setup
    full, pruned = shared_run(flavour, model, batch, False), shared_run(flavour, model, batch, True)
    sel = pruned.trace.last
    p, s = sel.max_kept, sel.prompt_length
    assert p == sel.valid_length[0] - sel.image_tokens[0] + sel.kept_image_tokens[0] < s
    assert lengths(pruned.cache) == [p + STEPS - 1] * 3
    keep = torch.tensor(sel.kept[0])
    for layer in range(K):  # the prompt entries of the cut layers equal the unpruned entries at keep, bitwise
        got, ref = tensors(pruned.cache.layers[layer]), tensors(full.cache.layers[layer])
        assert set(got) == {"keys", "values"}
        for name in got:
            assert torch.equal(got[name][:, :, :p], ref[name][:, :, :s][:, :, keep]), (layer, name)
    if flavour == "small":  # the compressed latent and the shared rotated k_pe are what MLA caches
        assert pruned.cache.layers[0].keys.shape[1::2] == (1, model.config.kv_lora_rank)
        assert pruned.cache.layers[0].values.shape[1::2] == (1, model.config.qk_rope_head_dim)
    assert sel.kv_bytes_per_token == sum(t.shape[1] * t.shape[3] * 4 for l in pruned.cache.layers
                                         for t in tensors(l).values())


# ---- §7.4 positions ------------------------------------------------------------------------------------------------
def test_positions_are_original(setup):
    flavour, model, _, batch = setup
    full, pruned = shared_run(flavour, model, batch, False), shared_run(flavour, model, batch, True)
    assert len(full.positions) == len(pruned.positions) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(full.positions, pruned.positions))
    s = batch["input_ids"].shape[1]
    assert [int(c) for c in pruned.positions[1:]] == list(range(s, s + STEPS - 1))
    keep = torch.tensor(pruned.trace.last.kept[0])
    seen, before = pruned.layer_k, full.layer_k
    assert torch.equal(seen["position_ids"][0], keep)
    pe, full_pe = seen["position_embeddings"], before["position_embeddings"]
    if isinstance(full_pe, tuple):
        assert all(torch.equal(a[0], b[0, keep]) for a, b in zip(pe, full_pe))
    else:  # DeepSeek-V2 MLA: one complex freqs_cis tensor
        assert full_pe.is_complex() and torch.equal(pe[0], full_pe[0, keep])
    ref = model.language.model.rotary_emb(torch.zeros(1, s, 8), torch.arange(s)[None])
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert torch.equal((full_pe[0] if isinstance(full_pe, tuple) else full_pe)[0], ref[0])


# ---- §7.5 oracle ---------------------------------------------------------------------------------------------------
def _mask(allowed, impl):
    allowed = allowed[None, None]
    return allowed if impl == "sdpa" else torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def _gather(pe, rows):
    return tuple(t[:, rows] for t in pe) if isinstance(pe, tuple) else pe[:, rows]


def oracle_logits(model, batch, keep, generated, layer):
    """One cache-less forward over prompt + generated tokens with a fixed keep set (one unpadded sample)."""
    text, impl = model.language.model, model.config._attn_implementation
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(batch["input_ids"], batch["images"], batch["images_seq_mask"],
                                             batch["images_spatial_crop"])
        s = embeds.shape[1]
        hidden = torch.cat([embeds, text.embed_tokens(torch.tensor([generated], dtype=torch.long))], 1)
        n = hidden.shape[1]
        pos = torch.arange(n)[None]
        pe = text.rotary_emb(hidden, pos)
        kept = torch.zeros(n, dtype=torch.bool)
        kept[keep] = True
        kept[s:] = True
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[s:, :s] &= kept[:s][None]  # generated rows never see pruned prompt positions
        kw = dict(attention_mask=_mask(allowed, impl), position_embeddings=pe, position_ids=pos,
                  past_key_values=None, use_cache=False)
        for i in range(layer):
            hidden = text.layers[i](hidden, **kw)
        rows = torch.nonzero(kept).flatten()
        m = rows.numel()
        kw = dict(attention_mask=_mask(torch.ones(m, m, dtype=torch.bool).tril(), impl),
                  position_embeddings=_gather(pe, rows), position_ids=pos[:, rows], past_key_values=None,
                  use_cache=False)
        hidden = hidden[:, rows]
        for i in range(layer, len(text.layers)):
            hidden = text.layers[i](hidden, **kw)
        logits = model.language.lm_head(text.norm(hidden))
    return logits[0, len(keep) - 1:]


def test_oracle_reproduces_cached_decode(setup):
    flavour, model, _, batch = setup
    pruned = shared_run(flavour, model, batch, True)
    s = batch["input_ids"].shape[1]
    ref = oracle_logits(model, batch, pruned.trace.last.kept[0], pruned.seq[0, s:s + STEPS - 1].tolist(), K)
    assert ref.shape[0] == len(pruned.logits) == STEPS
    for step, got in enumerate(pruned.logits):
        torch.testing.assert_close(got[0], ref[step], atol=1e-5, rtol=0, msg=f"step {step}")


# ---- §7.6 padded batch ---------------------------------------------------------------------------------------------
def test_padded_batch_equals_alone(setup):
    flavour, model, proc, first = setup
    prompts, images = [PROMPT, OTHER], [[image(384, 384, seed=1)], [image(768, 384, seed=3)]]
    batch = proc(prompts=prompts, images=images)
    both = run(model, batch, prune_with=method())
    sel_b = both.trace.last
    assert sel_b.kept_count[0] != sel_b.kept_count[1]
    assert lengths(both.cache)[0] == sel_b.max_kept + STEPS - 1
    width = batch["input_ids"].shape[1]
    for b in range(2):
        alone_inputs = proc(prompts=prompts[b], images=images[b])
        alone = shared_run(flavour, model, first, True) if b == 0 else run(model, alone_inputs, prune_with=method())
        offset = width - alone_inputs["input_ids"].shape[1]
        assert [i - offset for i in sel_b.kept[b]] == alone.trace.last.kept[0]
        assert both.seq[b, width:].tolist() == alone.seq[0, alone_inputs["input_ids"].shape[1]:].tolist()
        for lb, la in zip(both.logits, alone.logits):
            torch.testing.assert_close(lb[b], la[0], atol=1e-5, rtol=0)


# ---- other cases ---------------------------------------------------------------------------------------------------
def test_text_only_passes_through(load):
    model, proc = load("small", "sdpa")
    batch = proc(prompts="Tell me a story about a cat.", images=[])
    ref, got = run(model, batch), run(model, batch, prune_with=method())
    assert torch.equal(ref.seq, got.seq) and all(torch.equal(a, b) for a, b in zip(ref.logits, got.logits))
    assert got.trace.last.pruned is False and got.trace.last.image_tokens == [0]


def test_base_flavour_cos_sin_pair_and_tiling(load):
    """DeepSeek-V3 LM (interleaved (cos, sin)), a 2x3 tiling; cached greedy equals the oracle at K = 1."""
    model, proc = load("base", "eager")
    batch = proc(prompts=OTHER, images=[image(500, 1000, seed=4)])  # 768x1152 canvas: n_w = 2, n_h = 3
    got = run(model, batch, prune_with=method(layer=1))
    im = got.trace.last.images[0][0]
    assert im.grid == (2, 3) and im.length == 1429
    kept = set(im.kept)
    assert set(im.layout.newline_positions()) <= kept and im.layout.separator in kept
    s = batch["input_ids"].shape[1]
    ref = oracle_logits(model, batch, got.trace.last.kept[0], got.seq[0, s:s + STEPS - 1].tolist(), 1)
    for step, logits in enumerate(got.logits):
        torch.testing.assert_close(logits[0], ref[step], atol=1e-5, rtol=0)


def test_kept_sets_equal_across_backends_and_threads(load):
    kept = []
    old = torch.get_num_threads()
    try:
        for attn in ("eager", "sdpa"):
            model, proc = load("small", attn)
            batch = proc(prompts=PROMPT, images=[image(640, 480, seed=5)])
            for n in (1, 2):
                torch.set_num_threads(n)
                with torch.no_grad(), ivcprune.prune(model, method()) as trace:
                    model(**batch)
                kept.append(trace.last.kept)
    finally:
        torch.set_num_threads(old)
    assert all(k == kept[0] for k in kept)


def test_multi_image_and_unknown_image_size(load):
    """Each image selected on its own (its own layout, queries after it); no image_sizes -> every cell valid."""
    model, proc = load("small", "eager")
    batch = proc(prompts="<image>\n<image>\nWhich one is red?", images=[image(768, 384, seed=6), image(384, 384, seed=7)])
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        model(**batch)
    first, second = trace.last.images[0]
    assert (first.grid, second.grid) == ((2, 1), (1, 1)) and first.end < second.start
    for im in (first, second):
        assert im.start <= min(im.kept) and max(im.kept) < im.end
        assert set(im.layout.newline_positions()) <= set(im.kept) and im.layout.separator in im.kept
    assert len(first.seeds) == 1 and len(second.seeds) == 2  # round(0.01 * 112) vs round(0.01 * 196)
    del batch["image_sizes"]
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        model(**batch)
    assert len(trace.last.images[0][0].seeds) == 2  # size unknown: all 196 cells are candidates


def test_import_ivcprune_stays_light():
    import subprocess
    import sys

    code = ("import sys, ivcprune, ivcprune.models; "
            "assert 'ivcprune.models.deepseek_vl2' not in sys.modules and 'PIL' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- every registered method (the DeepSeek-VL2 rows of the runtime matrix) -----------------------------------------
def _method_matrix():
    from ivcprune.methods import method_names

    return [(f, n, a) for f in ("tiny", "small") for n in method_names() for a in ("eager", "sdpa")]


@pytest.mark.parametrize("flavour,name,attn", _method_matrix())
def test_every_method_identity_cache_and_batch(load, flavour, name, attn):
    """Retention 1.0 bit-exact (methods with a budget), per-layer cache lengths P + T - 1, newlines and separator
    kept, and a padded batch of two images equals each sample alone (kept sets and tokens)."""
    model, proc = load(flavour, attn)
    layer = K if ivcprune.make_method(name).selects_at == "layer" else None  # K = 0 and multi-stage: their own
    make = lambda r: ivcprune.make_method(name, layer, r)  # noqa: E731
    batch = proc(prompts=PROMPT, images=[image(384, 384, seed=1)])
    ref = shared_run(flavour, model, batch, pruned=False)
    if make(1.0).is_identity():
        same = run(model, batch, prune_with=make(1.0))
        assert torch.equal(ref.seq, same.seq) and all(torch.equal(a, b) for a, b in zip(ref.logits, same.logits))
    got = run(model, batch, prune_with=make(0.5))
    sel = got.trace.last
    assert sel.pruned and sel.kept_image_tokens[0] < sel.image_tokens[0]
    assert lengths(got.cache) == [n + STEPS - 1 for n in sel.cache_counts(0)]  # per layer as the stages say
    im = sel.images[0][0]
    assert set((get_adapter(model).structural_tokens(im) + im.start).tolist()) <= set(im.kept)
    prompts, images = [PROMPT, OTHER], [[image(384, 384, seed=1)], [image(768, 384, seed=3)]]
    both = run(model, proc(prompts=prompts, images=images), prune_with=make(0.5))
    width = both.trace.last.prompt_length
    for b in range(2):
        alone_inputs = proc(prompts=prompts[b], images=images[b])
        alone = got if b == 0 else run(model, alone_inputs, prune_with=make(0.5))
        offset = width - alone_inputs["input_ids"].shape[1]
        assert [i - offset for i in both.trace.last.kept[b]] == alone.trace.last.kept[0]
        assert both.seq[b, width:].tolist() == alone.seq[0, alone_inputs["input_ids"].shape[1]:].tolist()
