"""Unit tests of the pure core on hand-made tensors (docs/ALGORITHM.md §2-§3, §5 counts)."""

import math

import pytest
import torch

from ivcprune.core import policies
from ivcprune.core.foreground import affinity, foreground_scores, seeds, stage2
from ivcprune.core.ranking import count, rank, top_k
from ivcprune.core.rope import default_inv_freq, ivc_scores, ivc_select


@pytest.mark.parametrize("n, f, expected", [(165, 0.1, 16), (165, 0.5, 82), (25, 0.1, 2), (64, 0.1, 6),
                                             (64, 0.5, 32), (165, 0.01, 2), (64, 0.01, 1), (35, 0.1, 4)])
def test_count_is_python_half_to_even(n, f, expected):
    assert count(n, f) == expected


def test_count_clamps():
    assert count(10, 2.0) == 10
    assert count(10, 0.0, minimum=1) == 1
    assert count(10, 0.5, maximum=3) == 3
    assert count(0, 0.5, minimum=1) == 0


def test_top_k_ties_go_to_lower_index():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert rank(scores).tolist() == [1, 2, 4, 3, 0]
    assert top_k(scores, 99).tolist() == [1, 2, 4, 3, 0]


def test_rank_rejects_non_finite():
    with pytest.raises(ValueError, match="non-finite"):
        rank(torch.tensor([1.0, float("nan")]))


def test_ivc_scores_one_axis_by_hand():
    inv = torch.tensor([1.0, 0.5])
    c, s = ivc_scores(torch.tensor([[0, 1, 2]]), inv)
    for i, p in enumerate([0, 1, 2]):
        assert c[i].item() == pytest.approx((math.cos(p) + math.cos(p * 0.5)) / 2, abs=1e-6)
        assert s[i].item() == pytest.approx((math.sin(p) + math.sin(p * 0.5)) / 2, abs=1e-6)


def test_ivc_scores_mrope_mean_over_axes_and_symmetry():
    inv = default_inv_freq(1e6, 128)
    o = 15
    rr, cc = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    pos = torch.stack([torch.full((64,), o), o + rr.flatten(), o + cc.flatten()])
    c, s = ivc_scores(pos, inv)
    one = lambda p: torch.cos(torch.tensor(float(p)) * inv).mean()  # noqa: E731
    expected = (one(o) + one(o + 2) + one(o + 5)) / 3
    assert c[2 * 8 + 5].item() == pytest.approx(expected.item(), abs=1e-6)
    # separable and symmetric in (r, c): exact ties between (r, c) and (c, r)
    assert c[2 * 8 + 5].item() == c[5 * 8 + 2].item()
    assert s[1 * 8 + 6].item() == s[6 * 8 + 1].item()


def test_default_inv_freq_matches_formula():
    inv = default_inv_freq(10000.0, 8)
    assert torch.allclose(inv, torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75]))
    assert inv.dtype == torch.float32


def test_ivc_select_per_group_and_ties():
    c = torch.tensor([0.9, 0.1, 0.9, 0.5, 0.2, 0.8])
    s = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    cos_set, sin_set = ivc_select(c, s, None, 0.34, 0.34)  # round(6 * .34) = 2
    assert cos_set.tolist() == [0, 2]
    assert sin_set.tolist() == [1, 4]
    groups = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    cos_set, sin_set = ivc_select(c, s, groups, 0.34, 0.34)  # round(3 * .34) = 1 per group
    assert cos_set.tolist() == [0, 5]
    assert sin_set.tolist() == [1, 4]


def test_affinity_by_hand():
    torch.manual_seed(0)
    v = torch.randn(6, 2, 4)
    rows, keys = torch.tensor([4, 5]), torch.tensor([0, 1, 2, 3])
    cols = torch.tensor([1, 3])
    a = affinity(v, rows, cols, keys)
    for i, r in enumerate(rows):
        per_head = []
        for h in range(2):
            logits = torch.stack([v[r, h] @ v[k, h] for k in keys]) / 2.0
            per_head.append(torch.softmax(logits, 0))
        mean = torch.stack(per_head).mean(0)
        assert torch.allclose(a[i], mean[[1, 3]], atol=1e-6)


def test_affinity_rejects_columns_outside_keys():
    v = torch.randn(5, 1, 2)
    with pytest.raises(ValueError, match="subset"):
        affinity(v, torch.tensor([4]), torch.tensor([3]), torch.tensor([0, 1]))


def test_seeds_and_stage2_weight_every_row_equally():
    a_text = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]])
    assert seeds(a_text, torch.arange(3), 1).tolist() == [1]
    a_seed = torch.tensor([[0.0, 0.9, 0.1]])
    f = stage2(a_text, a_seed)
    assert torch.allclose(f, torch.tensor([0.1, 2.0 / 3, 0.7 / 3]))


def test_foreground_scores_seed_rows_include_self():
    torch.manual_seed(1)
    v = torch.randn(10, 2, 8)
    cols = torch.arange(2, 8)
    q = torch.tensor([8, 9])
    seed_cols, f = foreground_scores(v, q, cols, cols, n_seed=1)
    a_t = affinity(v, q, cols, cols)
    expected_seed = int(a_t.mean(0).argmax())
    assert seed_cols.tolist() == [expected_seed]
    a_s = affinity(v, cols[seed_cols], cols, cols)
    assert torch.allclose(f, torch.cat([a_t, a_s]).mean(0))


def test_budget_fills_by_score_and_never_drops_priority():
    scores = torch.tensor([0.5, 0.9, 0.1, 0.8, 0.7, 0.3, 0.2, 0.6])
    sel, fill = policies.budget(torch.tensor([2]), torch.tensor([6]), scores, 8, 0.5)
    assert sel.tolist() == [1, 2, 3, 6]  # prio {2, 6} + two best others (1, 3)
    assert fill.tolist() == [1, 3]
    sel, fill = policies.budget(torch.tensor([0, 2, 5]), torch.tensor([6]), scores, 8, 0.25)
    assert sel.tolist() == [0, 2, 5, 6]  # |prio| = 4 > T = 2: prio as is
    assert fill.tolist() == []


def test_union_policy_has_no_budget():
    scores = torch.tensor([0.5, 0.9, 0.1, 0.8, 0.7])
    sel, fill = policies.union(torch.tensor([0]), torch.tensor([4]), scores, 5, 0.4)
    assert sel.tolist() == [0, 1, 3, 4]
    assert fill.tolist() == [1, 3]


@pytest.mark.parametrize("length, text, expected_p, n_ivc, n_seed, target", [
    (64, 25, 57, 6, 1, 32),      # worked example A (8x8 grid, S = 89)
    (165, 37, 119, 16, 2, 82),   # example B (11x15 grid, S = 202): 16.5 -> 16, 82.5 -> 82
])
def test_worked_example_counts(length, text, expected_p, n_ivc, n_seed, target):
    assert count(length, 0.1) == n_ivc
    assert max(1, count(length, 0.01)) == n_seed
    assert count(length, 0.5) == target
    torch.manual_seed(0)
    scores = torch.rand(length)
    ivc = torch.cat([torch.arange(n_ivc), torch.arange(length - n_ivc, length)])
    sel, _ = policies.budget(ivc, torch.tensor([length // 2]), scores, length, 0.5)
    assert text + sel.numel() == expected_p
