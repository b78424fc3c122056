"""Runtime invariants of ALGORITHM §7 for Qwen2.5-VL and Qwen2-VL on tiny random checkpoints (eager and sdpa)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

import ivcprune
from ivcprune.testing import load_processor, make_image, tiny_checkpoint, tiny_inputs
from invariants import Case, PositionRecorder, cache_lengths, greedy, oracle_logits

MAX_PIXELS = 64 * 28 * 28  # up to 64 merged tokens per image
CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}
K = 2
STEPS = 4
_MODELS = {}


def load(family, attn):
    key = (family, attn)
    if key not in _MODELS:
        path = tiny_checkpoint(family, max_pixels=MAX_PIXELS)
        model = CLASSES[family].from_pretrained(path, attn_implementation=attn).eval()
        _MODELS[key] = (model, load_processor(path))
    return _MODELS[key]


def qwen_embed(model, inputs):
    ids = inputs["input_ids"]
    vl = model.model
    emb = vl.get_input_embeddings()(ids)
    feats = vl.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True).pooler_output
    feats = torch.cat(list(feats), dim=0)
    emb = emb.masked_scatter((ids == model.config.image_token_id)[..., None].expand_as(emb), feats)
    pos, _ = vl.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                               image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    return emb, pos


def case_for(family):
    return Case(family=family, load=lambda attn: load(family, attn),
                inputs=lambda proc, images, texts: tiny_inputs(family, proc, images, texts), embed=qwen_embed,
                image_size=(168, 140), other_size=(112, 196))


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


def test_identity_at_retention_one_is_bit_exact(setup):
    case, model, proc, inputs = setup
    seq, scores, _, _ = greedy(model, inputs, STEPS)
    seq1, scores1, _, trace = greedy(model, inputs, STEPS, method(1.0))
    assert torch.equal(seq, seq1)
    assert all(torch.equal(a, b) for a, b in zip(scores, scores1))
    with torch.no_grad():
        ref = model(**inputs).logits
        with ivcprune.prune(model, method(1.0)):
            got = model(**inputs).logits
    assert torch.equal(ref, got)
    assert trace.selections[-1].pruned is False


def test_cache_lengths_and_content(setup):
    case, model, proc, inputs = setup
    seq, scores, cache, trace = greedy(model, inputs, STEPS, method())
    sel = trace.selections[-1]
    p = sel.max_kept
    n_image = sel.image_tokens[0]
    assert sel.kept_image_tokens[0] == round(0.5 * n_image)
    assert p == sel.valid_length[0] - n_image + sel.kept_image_tokens[0]
    assert cache_lengths(cache) == [p + STEPS - 1] * model.config.text_config.num_hidden_layers
    # cut entries of layers < K equal the unpruned run's entries at keep, bitwise
    with torch.no_grad():
        full = model(**inputs, use_cache=True).past_key_values
        with ivcprune.prune(model, method()) as tr:
            out = model(**inputs, use_cache=True)
    assert out.logits.shape[1] == p
    assert cache_lengths(out.past_key_values) == [p] * model.config.text_config.num_hidden_layers
    keep = torch.tensor(tr.selections[-1].kept[0])
    for layer in range(K):
        assert torch.equal(out.past_key_values.layers[layer].keys[0], full.layers[layer].keys[0][:, keep])
        assert torch.equal(out.past_key_values.layers[layer].values[0], full.layers[layer].values[0][:, keep])


def test_decode_positions_are_original(setup):
    case, model, proc, inputs = setup
    text = ivcprune.models.get_adapter(model).text_model
    rec = PositionRecorder(text)
    try:
        greedy(model, inputs, STEPS)
        unpruned = rec.calls[1:]
        rec.calls.clear()
        _, _, _, trace = greedy(model, inputs, STEPS, method())
        pruned = rec.calls[1:]
    finally:
        rec.remove()
    assert len(unpruned) == len(pruned) == STEPS - 1
    for a, b in zip(unpruned, pruned):
        assert torch.equal(a, b)
    # the ids entering layer K are the original ids at keep
    keep = trace.selections[-1].kept[0]
    _, prompt_pos = case.embed(model, inputs)
    seen = {}
    layer_k = text.layers[K]
    with ivcprune.prune(model, method()):
        def grab(module, args, kwargs):
            seen["cos"] = kwargs["position_embeddings"][0]

        h = layer_k.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            h.remove()
    emb, _ = case.embed(model, inputs)
    cos_full, _ = text.rotary_emb(emb, prompt_pos)
    assert torch.equal(seen["cos"][0], cos_full[0, keep])


def test_hand_written_decode_loop_gets_original_positions(setup):
    """A decode loop that passes the full 2-D mask and no position ids still continues in original numbering."""
    case, model, proc, inputs = setup
    seq, scores, _, _ = greedy(model, inputs, STEPS, method())
    with torch.no_grad(), ivcprune.prune(model, method()):
        out = model(**inputs, use_cache=True)
        cache, mask = out.past_key_values, inputs["attention_mask"]
        logits = [out.logits[:, -1]]
        prompt_len = inputs["input_ids"].shape[1]
        for t in range(STEPS - 1):
            token = seq[:, prompt_len + t: prompt_len + t + 1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    for a, b in zip(logits, scores):
        valid = torch.isfinite(b)
        assert torch.allclose(a[valid], b[valid], atol=1e-5)


def test_cached_decode_equals_oracle(setup):
    case, model, proc, inputs = setup
    seq, scores, _, trace = greedy(model, inputs, STEPS, method())
    keep = trace.selections[-1].kept[0]
    prompt_len = inputs["input_ids"].shape[1]
    generated = seq[0, prompt_len:prompt_len + STEPS - 1].tolist()
    ref = oracle_logits(case, model, inputs, keep, generated, K)
    for step, score in enumerate(scores):
        valid = torch.isfinite(score[0])
        assert torch.allclose(ref[step][valid], score[0][valid], atol=1e-5), step


def test_padded_batch_equals_each_sample_alone(setup):
    case, model, proc, inputs = setup
    images = [make_image(*case.image_size, seed=1), make_image(*case.other_size, seed=2)]
    texts = [PROMPT, "What is in the picture?"]
    batch = case.inputs(proc, images, texts)
    seq_b, scores_b, cache_b, tr_b = greedy(model, batch, STEPS, method())
    sel_b = tr_b.selections[-1]
    assert cache_lengths(cache_b)[0] == sel_b.max_kept + STEPS - 1
    assert sel_b.kept_count[0] != sel_b.kept_count[1]
    width = batch["input_ids"].shape[1]
    for b in range(2):
        alone = case.inputs(proc, images[b], texts[b])
        seq_a, scores_a, _, tr_a = greedy(model, alone, STEPS, method())
        offset = width - alone["input_ids"].shape[1]
        assert [i - offset for i in sel_b.kept[b]] == tr_a.selections[-1].kept[0]
        assert seq_b[b, width:].tolist() == seq_a[0, alone["input_ids"].shape[1]:].tolist()
        for sb, sa in zip(scores_b, scores_a):
            valid = torch.isfinite(sa[0])
            assert torch.allclose(sb[b][valid], sa[0][valid], atol=1e-5)


def test_text_only_prompt_is_untouched(setup):
    case, model, proc, inputs = setup
    text_inputs = case.inputs(proc, None, "Tell me a story about a cat.")
    seq, scores, _, _ = greedy(model, text_inputs, STEPS)
    seq1, scores1, _, trace = greedy(model, text_inputs, STEPS, method())
    assert torch.equal(seq, seq1)
    assert all(torch.equal(a, b) for a, b in zip(scores, scores1))
    assert trace.selections[-1].pruned is False and trace.selections[-1].image_tokens == [0]


def test_several_images_are_budgeted_separately(setup):
    case, model, proc, inputs = setup
    two = case.inputs(proc, [[make_image(*case.image_size, seed=1), make_image(*case.other_size, seed=2)]], [PROMPT])
    _, _, cache, trace = greedy(model, two, STEPS, method())
    sel = trace.selections[-1]
    images = sel.images[0]
    assert len(images) == 2 and images[0].length != images[1].length
    for im in images:
        assert len(im.kept) == round(0.5 * im.length)
        assert all(im.start <= i < im.end for i in im.kept)
    image_positions = {i for im in images for i in range(im.start, im.end)}
    kept = set(sel.kept[0])
    assert kept >= {i for i in range(sel.prompt_length) if i not in image_positions}


def test_use_cache_false_returns_kept_rows(setup):
    case, model, proc, inputs = setup
    with torch.no_grad(), ivcprune.prune(model, method()) as trace:
        cached = model(**inputs, use_cache=True).logits
        uncached = model(**inputs, use_cache=False).logits
    p = trace.selections[-1].max_kept
    assert uncached.shape[1] == cached.shape[1] == p
    assert torch.allclose(uncached[:, -1], cached[:, -1], atol=1e-6)
    assert len(trace.selections) == 2


def test_selection_is_deterministic_across_threads_and_backends():
    family = "qwen2_5_vl"
    case = case_for(family)
    kept = []
    old = torch.get_num_threads()
    try:
        for attn in ("eager", "sdpa"):
            model, proc = case.load(attn)
            inputs = case.inputs(proc, make_image(*case.image_size, seed=1), PROMPT)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with torch.no_grad(), ivcprune.prune(model, method()) as trace:
                    model(**inputs)
                kept.append(trace.selections[-1].kept)
    finally:
        torch.set_num_threads(old)
    assert all(k == kept[0] for k in kept)


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
