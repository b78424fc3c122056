"""Qwen2.5-VL reference-exact rule set (docs/ALGORITHM.md §5): worked examples A and B on hand-built prompts, checked
against an independent, loop-by-loop transcription of rules R1-R8 (float64, ties to the lower index)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

import ivcprune
from ivcprune.testing import tiny_checkpoint

K = 2


@pytest.fixture(scope="module")
def model():
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen2_5_vl"),
                                                              attn_implementation="eager").eval()


def build_prompt(model, prefix: int, grid: tuple[int, int], suffix: int, seed: int = 0):
    """prefix text, vision_start, h*w image pads, vision_end, suffix text; image_grid_thw in patches."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    merge = cfg.vision_config.spatial_merge_size
    text = lambda n: torch.randint(20, 600, (n,), generator=g)  # noqa: E731
    ids = torch.cat([text(prefix), torch.tensor([cfg.vision_start_token_id]),
                     torch.full((h * w,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id]), text(suffix)])
    vc = cfg.vision_config
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    pixels = torch.randn(h * w * merge * merge, patch_dim, generator=g)
    return {
        "input_ids": ids[None],
        "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long),
        "mm_token_type_ids": (ids == cfg.image_token_id).long()[None],
        "pixel_values": pixels,
        "image_grid_thw": torch.tensor([[1, h * merge, w * merge]]),
    }


def reference_keep(model, inputs):
    """R1-R8 written out directly from the spec, independent of ivcprune.core."""
    cfg = model.config
    ids = inputs["input_ids"][0].tolist()
    v0, v1 = ids.index(cfg.vision_start_token_id), ids.index(cfg.vision_end_token_id)
    a, length, end, s = v0 + 1, v1 - v0 - 1, v1, len(ids)
    text = model.model.language_model
    captured = {}
    hook = text.layers[K - 1].self_attn.v_proj.register_forward_hook(lambda m, i, o: captured.setdefault("v", o))
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    tc = cfg.text_config
    head_dim = tc.hidden_size // tc.num_attention_heads
    values = captured["v"][0].reshape(s, tc.num_key_value_heads, head_dim).double()
    pos, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                        image_grid_thw=inputs["image_grid_thw"])
    theta = tc.rope_parameters["rope_theta"]
    omega = [float(torch.tensor(theta, dtype=torch.float32) ** (-2 * j / head_dim)) for j in range(head_dim // 2)]

    def top(scores, k):
        return sorted(range(len(scores)), key=lambda i: (-round(scores[i], 9), i))[:k]

    c, sn = [], []
    for i in range(a, end):
        ps = [int(pos[axis, 0, i]) for axis in range(3)]
        c.append(sum(math.cos(p * w) for p in ps for w in omega) / (3 * len(omega)))
        sn.append(sum(math.sin(p * w) for p in ps for w in omega) / (3 * len(omega)))
    n_ivc = round(0.1 * length)
    i_cos, i_sin = top(c, n_ivc), top(sn, n_ivc)

    def attend(row):
        out = [0.0] * length
        for hd in range(values.shape[1]):
            logits = [float(values[row, hd] @ values[a + j, hd]) / math.sqrt(head_dim) for j in range(length)]
            mx = max(logits)
            ex = [math.exp(x - mx) for x in logits]
            z = sum(ex)
            for j in range(length):
                out[j] += ex[j] / z / values.shape[1]
        return out

    q_rows = [attend(q) for q in range(end + 2, s)]
    score1 = [sum(r[j] for r in q_rows) / len(q_rows) for j in range(length)]
    n_seed = max(1, round(0.01 * length))
    seeds = top(score1, n_seed)
    rows = q_rows + [attend(a + j) for j in seeds]
    fg = [sum(r[j] for r in rows) / len(rows) for j in range(length)]
    prio = set(i_cos) | set(i_sin) | set(seeds)
    target = round(0.5 * length)
    fill = [j for j in top(fg, length) if j not in prio][:max(0, target - len(prio))]
    selected = prio | set(fill)
    keep = list(range(a)) + sorted(a + j for j in selected) + list(range(end, s))
    return keep, sorted(a + j for j in i_cos), sorted(a + j for j in i_sin), sorted(a + j for j in seeds)


@pytest.mark.parametrize("name, prefix, grid, suffix, counts", [
    ("A", 14, (8, 8), 9, dict(a=15, L=64, S=89, n_ivc=6, n_seed=1, T=32, P=57)),
    ("B", 18, (11, 15), 17, dict(a=19, L=165, S=202, n_ivc=16, n_seed=2, T=82, P=119)),
])
def test_worked_examples_match_reference_rules(model, name, prefix, grid, suffix, counts):
    inputs = build_prompt(model, prefix, grid, suffix)
    assert inputs["input_ids"].shape[1] == counts["S"]
    text = model.model.language_model
    seen = []
    hook = text.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()) and None,
                                          with_kwargs=True)
    try:
        with torch.no_grad(), ivcprune.prune(model, ivcprune.IVCPrune(layer=K)) as trace:
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    sel = trace.selections[-1]
    image = sel.images[0][0]
    assert (image.start, image.length) == (counts["a"], counts["L"])
    assert len(image.ivc_cos) == len(image.ivc_sin) == counts["n_ivc"]
    assert len(image.seeds) == counts["n_seed"]
    assert len(image.kept) == counts["T"]
    assert sel.kept_count == [counts["P"]]
    keep, i_cos, i_sin, seeds = reference_keep(model, inputs)
    assert sel.kept[0] == keep
    assert image.ivc_cos == i_cos and image.ivc_sin == i_sin and image.seeds == seeds
    # positions: prompt ends at position p_last; decode continues at p_last + 1, + 2 on all three streams
    prompt_pos = seen[0][1:, 0]
    last = int(prompt_pos.max())
    if name == "A":
        assert int(prompt_pos[0, counts["a"] + counts["L"]]) == 23 and last == 32
        assert int(model.model.rope_deltas[0]) == 33 - 89
    for step, pos in enumerate(seen[1:]):
        assert pos[1:, 0, -1].tolist() == [last + 1 + step] * 3
    assert out.shape[1] == counts["S"] + 3
