"""GLOBAL-LOCAL pieces of the DeepSeek-VL2 policy with hand-computed index sets (docs/ALGORITHM.md §2 F7, §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ivcprune.core import policies
from ivcprune.core.rope import default_inv_freq, ivc_scores, ivc_select
from ivcprune.models.deepseek_vl2.adapter import letterbox, valid_global_cells

G = 14


def _ids(t: torch.Tensor) -> list[int]:
    return sorted(t.tolist())


# ---- global -> local map ---------------------------------------------------------------------------------------
def test_map_1x1_is_the_same_cell():
    # W = 15: global (i, j) = i*15 + j lands on local (i, j) = i*15 + j
    assert _ids(policies.global_to_local(torch.tensor([0, 33, 208]), G, (1, 1))) == [0, 33, 208]


def test_map_2x1_doubles_columns():
    # W = 29; (0,0) -> row 0 cols 0-1; (1,3) -> row 1 cols 6-7; (13,13) -> row 13 cols 26-27
    got = policies.global_to_local(torch.tensor([0, 18, 208]), G, (2, 1))
    assert _ids(got) == [0, 1, 35, 36, 403, 404]


def test_map_2x3_covers_three_rows_two_columns():
    # W = 29; (0,0) -> rows 0-2 x cols 0-1; (1,2) -> rows 3-5 x cols 4-5; (13,13) -> rows 39-41 x cols 26-27
    assert _ids(policies.global_to_local(torch.tensor([0]), G, (2, 3))) == [0, 1, 29, 30, 58, 59]
    assert _ids(policies.global_to_local(torch.tensor([17]), G, (2, 3))) == [91, 92, 120, 121, 149, 150]
    assert _ids(policies.global_to_local(torch.tensor([208]), G, (2, 3))) == [1157, 1158, 1186, 1187, 1215, 1216]


def test_map_rejects_newline_cells():
    with pytest.raises(ValueError, match="newline"):
        policies.global_to_local(torch.tensor([14]), G, (1, 1))


# ---- IVC per local row -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_w,per_row", [(1, 2), (2, 4), (3, 6), (4, 9)])
def test_ivc_row_sizes(n_w, per_row):
    rows = policies.local_rows(G, (n_w, 2))
    width = G * n_w + 1
    assert len(rows) == 2 * G and all(r.numel() == width for r in rows)
    assert rows[1].tolist() == list(range(width, 2 * width))  # newline column included
    start = 237  # any 1-D offset: local positions are start + index
    length = 2 * G * width
    c, s = ivc_scores(torch.arange(start, start + length)[None], default_inv_freq(1e4, 64))
    cos_set, sin_set = ivc_select(c, s, rows, 0.15, 0.15)
    for row in rows:
        assert int(torch.isin(cos_set, row).sum()) == per_row
        assert int(torch.isin(sin_set, row).sum()) == per_row


# ---- valid_g ---------------------------------------------------------------------------------------------------
def test_valid_cells_of_letterboxed_wide_image():
    # 768x384 -> 384x192 at y = 96: picture rows [96, 288) -> cell rows 3..10 (cell 3 = [84,112), 10 = [280,308))
    assert letterbox((768, 384), 384) == (0, 96, 384, 288)
    expected = [i * 15 + j for i in range(3, 11) for j in range(14)]
    assert _ids(valid_global_cells((768, 384))) == expected


def test_valid_cells_tall_square_and_unknown():
    assert _ids(valid_global_cells((384, 768))) == [i * 15 + j for i in range(14) for j in range(3, 11)]
    every = [i * 15 + j for i in range(14) for j in range(14)]
    assert _ids(valid_global_cells((500, 500))) == every
    assert _ids(valid_global_cells(None)) == every


def test_valid_cells_rounding_case():
    # 1000x300: new_h = round(115.2) = 115, y = round(134.5) = 134 (half to even) -> [134, 249): rows 4..8
    assert letterbox((1000, 300), 384) == (0, 134, 384, 249)
    assert _ids(valid_global_cells((1000, 300))) == [i * 15 + j for i in range(4, 9) for j in range(14)]


@pytest.mark.parametrize("size", [(1000, 300), (768, 384), (301, 1000), (640, 480)])
def test_valid_cells_match_pil_pad(size):
    """A cell is valid iff ImageOps.pad put any picture pixel into it (solid colour: no resampling blur)."""
    pic = Image.new("RGB", size, (255, 0, 0))
    canvas = torch.from_numpy(np.array(ImageOps.pad(pic, (384, 384), color=(127, 127, 127))))
    red = canvas[..., 0] != 127
    expected = [i * 15 + j for i in range(14) for j in range(14)
                if bool(red[28 * i:28 * i + 28, 28 * j:28 * j + 28].any())]
    assert _ids(valid_global_cells(size)) == expected


# ---- the policy --------------------------------------------------------------------------------------------------
def test_global_local_hand_example():
    # g = 2: global cells 0 1 [2 nl] / 3 4 [5 nl]; grid (2, 1): local W = 5, rows 0..1, newlines 4 and 9
    scores = torch.tensor([0.9, 0.1, 0.95, 0.5, 0.99, 0.0])  # F order: 4, 2, 0, 3, 1, 5
    glob, loc, fg = policies.global_local(
        ivc_global=torch.tensor([0]), ivc_rows=torch.tensor([0, 6]), seeds=torch.tensor([3]), scores=scores,
        valid=torch.tensor([0, 1, 3]), g=2, grid=(2, 1), retention=0.5,
    )
    # fg: max(1, round(0.5*6) - 1) = 2 valid non-IVC cells in F order: 3, then 1 (4 is padding, 2 a newline)
    assert _ids(fg) == [1, 3]
    assert _ids(glob) == [0, 1, 2, 3, 5]
    # map({1, 3}): (0,1) -> row 0 cols 2-3 = {2, 3}; (1,0) -> row 1 cols 0-1 = {5, 6}
    assert _ids(loc) == [0, 2, 3, 4, 5, 6, 9]


def test_global_local_keeps_one_foreground_cell_when_ivc_fills_the_budget():
    scores = torch.arange(6, dtype=torch.float32)  # F order: 5, 4, 3, 2, 1, 0
    glob, loc, fg = policies.global_local(torch.tensor([0, 1, 3]), torch.empty(0, dtype=torch.long),
                                          torch.tensor([1]), scores, torch.tensor([0, 1, 3, 4]), 2, (1, 1))
    assert _ids(fg) == [4]  # max(1, 3 - 3) = 1
    assert _ids(glob) == [0, 1, 2, 3, 4, 5]
    assert _ids(loc) == [1, 2, 4, 5]  # map({1, 4}) at W = 3, plus newlines 2 and 5


def test_global_local_default_counts_on_a_real_layout():
    """210 global positions: 21 + 21 IVC cells by default, fg fills round(0.5*210) - |IVC_g|."""
    c, s = ivc_scores(torch.arange(20, 230)[None], default_inv_freq(1e4, 64))
    g_cos, g_sin = ivc_select(c, s, None, 0.10, 0.10)
    assert g_cos.numel() == g_sin.numel() == 21
    ivc = torch.cat([g_cos, g_sin]).unique()
    valid = valid_global_cells((768, 384))
    scores = torch.linspace(0, 1, 210)
    glob, loc, fg = policies.global_local(ivc, torch.empty(0, dtype=torch.long), valid[:1], scores, valid, G, (2, 1))
    assert fg.numel() == min(105 - ivc.numel(), int((~torch.isin(valid, ivc)).sum()))
    assert bool(torch.isin(fg, valid).all()) and not bool(torch.isin(fg, ivc).any())
    assert set(range(14, 210, 15)) <= set(glob.tolist())
