"""IVC scores under interleaved (Qwen3-VL) and contiguous (Qwen2/2.5-VL) M-RoPE: the "applied" rule against the
"reference" rule on hand-made positions, with the expected index sets written out (docs/ALGORITHM.md §2 F2)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

import ivcprune
from ivcprune.core.rope import ivc_scores, ivc_scores_applied, ivc_select
from ivcprune.models.qwen3_vl import interleaved_axes
from ivcprune.testing import tiny_checkpoint

# A 4 x 4 merged grid at offset 0: p_t = 0, p_h = r, p_w = c (raster index i = 4 r + c), and six frequencies
# w_j = pi / 2^j. With t = 0 every t frequency adds cos 0 = 1 and sin 0 = 0.
OMEGA = torch.tensor([math.pi / 2 ** j for j in range(6)])
_R, _C = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
GRID = torch.stack([torch.zeros(16, dtype=torch.long), _R.flatten(), _C.flatten()])
INTERLEAVED = [0, 1, 2, 0, 1, 2]  # section (2, 2, 2): h on j = 1, 4; w on j = 2, 5; t on j = 0, 3
CONTIGUOUS = [0, 0, 1, 1, 2, 2]  # section (2, 2, 2): t on j = 0, 1; h on 2, 3; w on 4, 5


def top4(c, s):
    cos_set, sin_set = ivc_select(c, s, None, 0.25, 0.25)  # round(0.25 * 16) = 4 each
    return cos_set.tolist(), sin_set.tolist()


def test_interleaved_axes_of_the_released_section():
    axes = interleaved_axes([24, 20, 20], 64)
    assert torch.nonzero(axes == 1).flatten().tolist() == list(range(1, 60, 3))  # 1, 4, ..., 58: 20 frequencies
    assert torch.nonzero(axes == 2).flatten().tolist() == list(range(2, 60, 3))  # 2, 5, ..., 59: 20
    assert torch.nonzero(axes == 0).flatten().tolist() == list(range(0, 60, 3)) + [60, 61, 62, 63]  # 24
    assert interleaved_axes([2, 2, 2], 6).tolist() == INTERLEAVED
    assert interleaved_axes([6, 5, 5], 16).tolist() == [0, 1, 2] * 5 + [0]


def test_interleaved_applied_rule_on_a_hand_made_grid():
    # c * 6 = 2 + [cos(r pi/2) + cos(r pi/16)] + [cos(c pi/4) + cos(c pi/32)]: row 0 = 6, 5.70, 4.98, 4.25;
    # column 0 = 6, 4.98 (r = 1), 3.92, 4.83, so the top 4 are (0,0), (0,1) and the exact pair (0,2) / (1,0).
    # s * 6 = [sin(r pi/2) + sin(r pi/16)] + [sin(c pi/4) + sin(c pi/32)]: best (1,2) 2.39, (1,3) 2.19,
    # (1,1) 2.00, (2,2) 1.58; the fifth, (2,3), has 1.38.
    c, s = ivc_scores_applied(GRID, OMEGA, torch.tensor(INTERLEAVED))
    assert top4(c, s) == ([0, 1, 2, 4], [5, 6, 7, 10])
    assert c[0] == pytest.approx(1.0) and 6 * c[1] == pytest.approx(2 + 2 + math.sqrt(0.5) + math.cos(math.pi / 32))


def test_contiguous_applied_rule_on_the_same_grid():
    # h takes pi/4, pi/8 and w the two slowest frequencies pi/16, pi/32: the whole first row wins on cos
    # (6, 5.98, 5.90, 5.79 against 5.63 at (1,0)); on sin the bottom-right (1.9 to 2.6).
    c, s = ivc_scores_applied(GRID, OMEGA, torch.tensor(CONTIGUOUS))
    assert top4(c, s) == ([0, 1, 2, 3], [10, 11, 14, 15])


def test_reference_rule_on_the_same_grid():
    # Every axis over all six frequencies: c = [C(0) + C(r) + C(c)] / 3 with 6 C(1) = 2.6070, 6 C(2) = 2.6118,
    # symmetric in r and c. (0,2) and (2,0) tie exactly above (0,1) and (1,0), which tie at the cut: the lower
    # index, 1, wins. sin: (1,1) 1.589, then (1,2) = (2,1) 1.556, then (2,2) 1.523.
    c, s = ivc_scores(GRID, OMEGA)
    assert c[2] == c[8] and c[1] == c[4]
    assert top4(c, s) == ([0, 1, 2, 8], [5, 6, 9, 10])


def test_applied_rule_equals_reference_on_one_axis():
    pos = torch.arange(7, 19)[None]
    ref = ivc_scores(pos, OMEGA)
    app = ivc_scores_applied(pos, OMEGA, torch.zeros(6, dtype=torch.long))
    assert torch.equal(ref[0], app[0]) and torch.equal(ref[1], app[1])


def test_axes_must_cover_every_frequency():
    with pytest.raises(ValueError, match="axis"):
        ivc_scores_applied(GRID, OMEGA, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="axis"):
        ivc_scores_applied(GRID, OMEGA, torch.tensor([0, 1, 2, 3, 0, 0]))
    with pytest.raises(ValueError, match="ivc_rule"):
        ivcprune.IVCPrune(ivc_rule="mean")


@pytest.mark.parametrize("family,cls", [("qwen3_vl", Qwen3VLForConditionalGeneration),
                                        ("qwen2_5_vl", Qwen2_5_VLForConditionalGeneration)])
def test_rotary_axes_describe_what_the_model_rotates(family, cls):
    """The adapter's axis per frequency is the one the model's own rotary module uses: with t, h, w ids 3, 5, 7
    every entry of the model's cos table equals cos(p[axis_j] w_j)."""
    model = cls.from_pretrained(tiny_checkpoint(family, max_pixels=64 * 32 * 32 if family == "qwen3_vl"
                                                else 64 * 28 * 28)).eval()
    adapter = ivcprune.models.get_adapter(model)
    axes, omega = adapter.rotary_axes(), adapter.inv_freq()
    pos = torch.tensor([3, 5, 7]).view(3, 1, 1)
    cos, _ = adapter.text_model.rotary_emb(torch.zeros(1, 1, 1), pos)
    expected = torch.cos(torch.tensor([3.0, 5.0, 7.0])[axes] * omega)
    assert torch.allclose(cos[0, 0, : omega.numel()], expected, atol=1e-6)
    if family == "qwen3_vl":
        assert axes.tolist() == [0, 1, 2] * 5 + [0]  # mrope_section [6, 5, 5], interleaved
    else:
        t, h, w = adapter.text_model.rotary_emb.mrope_section
        assert axes.tolist() == [0] * t + [1] * h + [2] * w  # contiguous blocks
