"""Family-independent helpers for the runtime invariant matrix (docs/ALGORITHM.md §7).

Each family contributes a ``Case`` (how to load its tiny model, build prompts, and compute the prompt embeddings
and position ids for the oracle); the tests in test_runtime_*.py run the same checks on every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import ivcprune


@dataclass
class Case:
    family: str
    load: Callable  # (attn) -> (model, processor)
    inputs: Callable  # (processor, images, texts) -> BatchFeature
    embed: Callable  # (model, inputs) -> (inputs_embeds (B,S,H), prompt positions (A,B,S) or (B,S))
    image_size: tuple = (112, 84)
    other_size: tuple = (84, 140)
    # (model, inputs) -> {layer: (prompt rows (N,), features (N, D))} that the text model adds after that layer
    # (Qwen3-VL DeepStack); None: nothing
    residual: Callable | None = None


def greedy(model, inputs, steps, method=None):
    """Greedy generate (min_new_tokens pins the length); returns (sequences, scores, cache, trace)."""
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        if method is None:
            out = model.generate(**inputs, **kwargs)
            return out.sequences, out.scores, out.past_key_values, None
        with ivcprune.prune(model, method) as trace:
            out = model.generate(**inputs, **kwargs)
        return out.sequences, out.scores, out.past_key_values, trace


def cache_lengths(cache) -> list[int]:
    return [layer.keys.shape[2] for layer in cache.layers]


def _allowed_to_mask(allowed: torch.Tensor, impl: str, dtype) -> torch.Tensor:
    allowed = allowed[None, None]
    if impl == "sdpa":
        return allowed
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)


def rotary(text_model, hidden, positions):
    """Position embeddings from the model's own rotary module for (A, 1, N) or (1, N) position ids."""
    return text_model.rotary_emb(hidden, positions)


def oracle_logits(case: Case, model, inputs, keep: list[int], generated: list[int], layer: int, stages=()):
    """One cache-less forward over prompt + generated tokens with a fixed keep set (sample 0, no padding).

    Layers < K see the full prompt causally, generated rows masked from pruned prompt positions; layers >= K run
    on keep + generated. ``stages``: the later stages of a multi-stage selection as (layer, keep) pairs, each
    narrowing the rows again from its layer on. Returns the logits that predict each generated token
    (len(generated) + 1 rows).
    """
    adapter = ivcprune.models.get_adapter(model)
    text = adapter.text_model
    impl = adapter.attn_implementation
    embeds, positions = case.embed(model, inputs)
    s = embeds.shape[1]
    gen = torch.tensor(generated, dtype=torch.long)[None]
    gen_embeds = text.get_input_embeddings()(gen) if gen.numel() else embeds[:, :0]
    hidden = torch.cat([embeds, gen_embeds], dim=1)
    n = hidden.shape[1]
    last = int(positions.max())
    gen_pos = torch.arange(last + 1, last + 1 + len(generated))
    if positions.ndim == 3:
        gen_pos = gen_pos.view(1, 1, -1).expand(positions.shape[0], 1, -1)
    else:
        gen_pos = gen_pos.view(1, -1)
    pos = torch.cat([positions, gen_pos], dim=-1)
    cos_sin = rotary(text, hidden, pos)

    kept = torch.zeros(n, dtype=torch.bool)
    kept[keep] = True
    kept[s:] = True
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal.clone()
    allowed[s:, :s] &= kept[:s][None, :]  # generated rows never see pruned prompt positions
    mask = _allowed_to_mask(allowed, impl, hidden.dtype)
    residual = case.residual(model, inputs) if case.residual else {}

    def add_residual(i, hidden, rows):
        if i not in residual:
            return hidden
        at, features = residual[i]
        where = torch.isin(rows, at)  # rows of the running sequence that get a feature, in prompt order
        hidden = hidden.clone()
        hidden[0, where] = hidden[0, where] + features[torch.isin(at, rows)].to(hidden.dtype)
        return hidden

    with torch.no_grad():
        for i in range(layer):
            hidden = text.layers[i](hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=None,
                                    past_key_values=None, use_cache=False)
            hidden = add_residual(i, hidden, torch.arange(n))
        rows = torch.nonzero(kept).flatten()
        hidden = hidden[:, rows]
        cos_sin = tuple(t[:, rows] for t in cos_sin)
        m = rows.numel()
        mask = _allowed_to_mask(torch.ones(m, m, dtype=torch.bool).tril(), impl, hidden.dtype)
        later = dict(stages)
        for i in range(layer, len(text.layers)):
            if i in later:  # a later stage: keep its prompt rows and every generated row
                narrow = torch.isin(rows, torch.tensor(later[i])) | (rows >= s)
                rows, hidden = rows[narrow], hidden[:, narrow]
                cos_sin = tuple(t[:, narrow] for t in cos_sin)
                keep = later[i]
                m = rows.numel()
                mask = _allowed_to_mask(torch.ones(m, m, dtype=torch.bool).tril(), impl, hidden.dtype)
            hidden = text.layers[i](hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=None,
                                    past_key_values=None, use_cache=False)
            hidden = add_residual(i, hidden, rows)
        hidden = text.norm(hidden)
        head = model.lm_head if hasattr(model, "lm_head") else model.language.lm_head  # DeepSeek-VL2: language
        logits = head(hidden)
    first = len(keep) - 1  # the last prompt row (of the last stage) predicts the first generated token
    return logits[0, first:]


class PositionRecorder:
    """Records the position ids every text-model call receives (decode steps included)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        pos = kwargs.get("position_ids")
        self.calls.append(None if pos is None else pos.clone())

    def remove(self):
        self.handle.remove()


# --- family-independent checks (used by test_runtime_llava.py / test_runtime_internvl.py) ----------------------
# ``make`` is a callable retention -> PruningMethod; inputs may carry extra model kwargs (e.g. image_sizes).


def embed_via_hook(model, inputs):
    """Prompt embeddings and position ids exactly as the text model receives them (unhooked forward)."""
    text = ivcprune.models.get_adapter(model).text_model
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()
        pos = kwargs.get("position_ids")
        seen["pos"] = None if pos is None else pos.clone()

    handle = text.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    emb = seen["embeds"]
    pos = seen["pos"] if seen["pos"] is not None else torch.arange(emb.shape[1])[None].expand(emb.shape[0], -1)
    return emb, pos


def check_identity(model, inputs, make, steps):
    seq, scores, _, _ = greedy(model, inputs, steps)
    seq1, scores1, _, trace = greedy(model, inputs, steps, make(1.0))
    assert torch.equal(seq, seq1)
    assert all(torch.equal(a, b) for a, b in zip(scores, scores1))
    with torch.no_grad():
        ref = model(**inputs).logits
        with ivcprune.prune(model, make(1.0)):
            got = model(**inputs).logits
    assert torch.equal(ref, got)
    assert trace.selections[-1].pruned is False


def check_cache(model, inputs, make, layer, steps):
    """Cache lengths after prefill and generate, and bitwise cut content of layers < K. Returns the selection."""
    n_layers = ivcprune.models.get_adapter(model).num_layers
    _, _, cache, trace = greedy(model, inputs, steps, make(None))
    sel = trace.selections[-1]
    p = sel.max_kept
    assert p == sel.valid_length[0] - sel.image_tokens[0] + sel.kept_image_tokens[0]
    counts = sel.cache_counts(0)  # [p] * N_L for one stage; per layer as the stages say for several
    assert len(counts) == n_layers and counts[:max(1, layer)] == [p] * max(1, layer)
    assert cache_lengths(cache) == [c + steps - 1 for c in counts]
    with torch.no_grad():
        full = model(**inputs, use_cache=True).past_key_values
        with ivcprune.prune(model, make(None)) as tr:
            out = model(**inputs, use_cache=True)
    assert out.logits.shape[1] == len(tr.selections[-1].final_kept[0])
    assert cache_lengths(out.past_key_values) == counts
    keep = torch.tensor(tr.selections[-1].kept[0])
    for i in range(layer):
        assert torch.equal(out.past_key_values.layers[i].keys[0], full.layers[i].keys[0][:, keep])
        assert torch.equal(out.past_key_values.layers[i].values[0], full.layers[i].values[0][:, keep])
    return sel


def check_positions(model, inputs, make, layer, steps):
    """Decode position ids equal the unpruned run's; rotary entering layer K is the original one at keep."""
    text = ivcprune.models.get_adapter(model).text_model
    rec = PositionRecorder(text)
    try:
        greedy(model, inputs, steps)
        unpruned = rec.calls[1:]
        rec.calls.clear()
        _, _, _, trace = greedy(model, inputs, steps, make(None))
        pruned = rec.calls[1:]
    finally:
        rec.remove()
    assert len(unpruned) == len(pruned) == steps - 1
    for a, b in zip(unpruned, pruned):
        assert torch.equal(a, b)
    keep = trace.selections[-1].kept[0]
    seen = {}
    def grab(module, args, kwargs):
        seen["cos"] = kwargs["position_embeddings"][0]

    with torch.no_grad(), ivcprune.prune(model, make(None)):
        handle = text.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)  # runs after the cut
        try:
            model(**inputs)
        finally:
            handle.remove()
    emb, pos = embed_via_hook(model, inputs)
    cos_full, _ = text.rotary_emb(emb, pos)
    assert torch.equal(seen["cos"][0], cos_full[0, keep])


def check_handwritten_decode(model, inputs, make, steps):
    """A decode loop passing the full 2-D mask and no position ids continues in the original numbering."""
    seq, scores, _, _ = greedy(model, inputs, steps, make(None))
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad(), ivcprune.prune(model, make(None)):
        out = model(**inputs, use_cache=True)
        cache, mask = out.past_key_values, inputs["attention_mask"]
        logits = [out.logits[:, -1]]
        prompt_len = inputs["input_ids"].shape[1]
        for t in range(steps - 1):
            token = seq[:, prompt_len + t: prompt_len + t + 1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True, **extra)
            logits.append(out.logits[:, -1])
    for a, b in zip(logits, scores):
        valid = torch.isfinite(b)
        assert torch.allclose(a[valid], b[valid], atol=1e-5)


def check_oracle(case, model, inputs, make, layer, steps):
    seq, scores, _, trace = greedy(model, inputs, steps, make(None))
    sel = trace.selections[-1]
    keep = sel.kept[0]
    prompt_len = inputs["input_ids"].shape[1]
    generated = seq[0, prompt_len:prompt_len + steps - 1].tolist()
    ref = oracle_logits(case, model, inputs, keep, generated, layer, [(st.layer, st.kept[0]) for st in sel.stages])
    for step, score in enumerate(scores):
        valid = torch.isfinite(score[0])
        assert torch.allclose(ref[step][valid], score[0][valid], atol=1e-5), step


def check_padded_batch(case, model, proc, make, steps, images, texts):
    """A left-padded batch of 2 gives each sample its alone keep set, tokens and logits (1e-5)."""
    batch = case.inputs(proc, images, texts)
    seq_b, scores_b, cache_b, tr_b = greedy(model, batch, steps, make(None))
    sel_b = tr_b.selections[-1]
    assert cache_lengths(cache_b)[0] == sel_b.max_kept + steps - 1
    assert sel_b.kept_count[0] != sel_b.kept_count[1]
    width = batch["input_ids"].shape[1]
    for b in range(2):
        alone = case.inputs(proc, images[b], texts[b])
        seq_a, scores_a, _, tr_a = greedy(model, alone, steps, make(None))
        offset = width - alone["input_ids"].shape[1]
        assert [i - offset for i in sel_b.kept[b]] == tr_a.selections[-1].kept[0]
        for st_b, st_a in zip(sel_b.stages, tr_a.selections[-1].stages, strict=True):  # multi-stage: every stage
            assert [i - offset for i in st_b.kept[b]] == st_a.kept[0]
        assert seq_b[b, width:].tolist() == seq_a[0, alone["input_ids"].shape[1]:].tolist()
        for sb, sa in zip(scores_b, scores_a):
            valid = torch.isfinite(sa[0])
            assert torch.allclose(sb[b][valid], sa[0][valid], atol=1e-5)
    return sel_b


def check_text_only(case, model, proc, make, steps):
    text_inputs = case.inputs(proc, None, "Tell me a story about a cat.")
    seq, scores, _, _ = greedy(model, text_inputs, steps)
    seq1, scores1, _, trace = greedy(model, text_inputs, steps, make(None))
    assert torch.equal(seq, seq1)
    assert all(torch.equal(a, b) for a, b in zip(scores, scores1))
    assert trace.selections[-1].pruned is False and trace.selections[-1].image_tokens == [0]


def check_use_cache_false(model, inputs, make):
    with torch.no_grad(), ivcprune.prune(model, make(None)) as trace:
        cached = model(**inputs, use_cache=True).logits
        uncached = model(**inputs, use_cache=False).logits
    p = max(len(k) for k in trace.selections[-1].final_kept)
    assert uncached.shape[1] == cached.shape[1] == p
    assert torch.allclose(uncached[:, -1], cached[:, -1], atol=1e-6)
    assert len(trace.selections) == 2


def kept_sets_across(case, make, inputs_for, attns=("eager", "sdpa"), threads=(1, 2)):
    """Kept sets of one prompt for every (backend, thread count); callers assert they are all equal."""
    kept = []
    old = torch.get_num_threads()
    try:
        for attn in attns:
            model, proc = case.load(attn)
            inputs = inputs_for(proc)
            for n in threads:
                torch.set_num_threads(n)
                with torch.no_grad(), ivcprune.prune(model, make(None)) as trace:
                    model(**inputs)
                kept.append(trace.selections[-1].kept)
    finally:
        torch.set_num_threads(old)
    return kept
