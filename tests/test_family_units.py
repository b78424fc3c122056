"""Family-specific pieces on hand-made inputs: LLaVA 1-D IVC on a 24x24 grid, InternVL per-tile IVC, the
thumbnail-to-tile map for 1, 2x1 and 3x2 tilings, THUMB-BUDGET, the tiling recovery and the LLaVA policy switch.

Expected sets are either written out by hand or recomputed here independently in float64 with ``math``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ivcprune.core.policies import thumb_budget, upsample_thumbnail
from ivcprune.core.rope import default_inv_freq, ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.methods.ivcp import family_defaults
from ivcprune.models.internvl import InternVLAdapter, tile_grid

INTERNVL_SETTINGS = family_defaults("internvl")
LLAVA_SETTINGS = family_defaults("llava")


def reference_ivc(positions, theta, dim, k):
    """Independent float64 IVC: top-k of mean cos / mean sin, ties to the lower index; also the cut-off gaps."""
    freqs = [theta ** (-2 * j / dim) for j in range(dim // 2)]
    result, gaps = [], []
    for fn in (math.cos, math.sin):
        score = [sum(fn(p * w) for w in freqs) / len(freqs) for p in positions]
        order = sorted(range(len(score)), key=lambda i: (-score[i], i))
        result.append(sorted(order[:k]))
        gaps.append(score[order[k - 1]] - score[order[k]])
    return result, min(gaps)


# --- LLaVA ----------------------------------------------------------------------------------------------------------

LLAVA_OFFSET = 35  # first image index of a typical LLaVA-1.5 prompt (system prompt + "USER: ")
LLAVA_COS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 21, 22, 23, 24, 30, 31, 32, 33, 40, 41, 42, 53, 66]
LLAVA_SIN = [149, 192, 211, 212, 249, 250, 293, 294, 343, 344, 345, 368, 401, 402, 403, 404, 430, 431, 432, 469, 470,
             471, 502, 503, 546, 547, 548, 549, 550]


def test_llava_ivc_on_a_24x24_grid():
    positions = torch.arange(LLAVA_OFFSET, LLAVA_OFFSET + 576)  # 1-D RoPE: p = o + raster index
    c, s = ivc_scores(positions, default_inv_freq(1e4, 128))
    f = LLAVA_SETTINGS.ivc_fraction
    cos_set, sin_set = ivc_select(c, s, None, f, f)
    assert len(cos_set) == len(sin_set) == round(0.05 * 576) == 29
    (ref_cos, ref_sin), gap = reference_ivc(positions.tolist(), 1e4, 128, 29)
    assert gap > 1e-4  # far above float32 noise, so float64 and float32 must agree
    assert cos_set.tolist() == ref_cos == LLAVA_COS
    assert sin_set.tolist() == ref_sin == LLAVA_SIN
    # V gathers on the first raster positions (top-left), U forms stripes further down
    assert all(i // 24 <= 2 for i in LLAVA_COS) and min(LLAVA_SIN) // 24 >= 6


def test_llava_ivc_depends_on_the_offset():
    """The pattern moves with the start offset o: a span at a different index gets a different set."""
    inv = default_inv_freq(1e4, 128)
    a = ivc_select(*ivc_scores(torch.arange(0, 576), inv), None, 0.05, 0.05)[1]
    b = ivc_select(*ivc_scores(torch.arange(LLAVA_OFFSET, LLAVA_OFFSET + 576), inv), None, 0.05, 0.05)[1]
    assert a.tolist() != b.tolist()


def test_llava_settings_follow_the_table():
    s = LLAVA_SETTINGS
    assert (s.ivc_fraction, s.fg_fraction, s.seed_fraction, s.query_offset, s.keys) == (0.05, 0.2, 0.01, 2, "prompt")
    assert s.retention is None and dict(s.default_layers)[32] == 16
    assert max(1, round(s.seed_fraction * 576)) == 6


# --- InternVL: per-tile IVC -----------------------------------------------------------------------------------------

def internvl_adapter(tile_tokens):
    adapter = InternVLAdapter.__new__(InternVLAdapter)
    adapter.model = SimpleNamespace(config=SimpleNamespace(image_seq_length=tile_tokens))
    return adapter


@pytest.mark.parametrize("grid,tiles", [((1, 1), 1), ((2, 1), 3), ((3, 2), 7)])
def test_internvl_ivc_runs_per_tile(grid, tiles):
    t, offset = 256, 47
    image = ImageRecord(start=offset, length=tiles * t, grid=grid)
    groups = internvl_adapter(t).image_groups(image)
    assert [g.indices.tolist() for g in groups] == [list(range(i * t, (i + 1) * t)) for i in range(tiles)]
    assert [g.role for g in groups] == ["tile"] * (tiles - 1) + ["thumbnail"]
    groups = [g.indices for g in groups]
    positions = torch.arange(offset, offset + tiles * t)
    c, s = ivc_scores(positions, default_inv_freq(1e6, 128))
    f = INTERNVL_SETTINGS.ivc_fraction
    cos_set, sin_set = ivc_select(c, s, groups, f, f)
    k = round(0.1 * t)
    assert k == 26 and len(cos_set) == len(sin_set) == tiles * k
    for i in range(tiles):
        (ref_cos, ref_sin), gap = reference_ivc(list(range(offset + i * t, offset + (i + 1) * t)), 1e6, 128, k)
        assert gap > 1e-5
        assert [j - i * t for j in cos_set.tolist() if i * t <= j < (i + 1) * t] == ref_cos
        assert [j - i * t for j in sin_set.tolist() if i * t <= j < (i + 1) * t] == ref_sin


# --- InternVL: thumbnail -> tiles -----------------------------------------------------------------------------------

def test_upsample_2x1():
    # 4x4 thumbnail, full grid 4 rows x 8 columns: cell (r, c) -> row r, columns 2c and 2c+1
    assert upsample_thumbnail(torch.tensor([0]), 4, (2, 1)).tolist() == [0, 1]
    assert upsample_thumbnail(torch.tensor([6]), 4, (2, 1)).tolist() == [20, 21]  # (1,2): tile 1, offsets 4, 5
    assert upsample_thumbnail(torch.tensor([15]), 4, (2, 1)).tolist() == [30, 31]


def test_upsample_3x2():
    # full grid 8 rows x 12 columns; cell (1,2) -> rows 2-3, columns 6-8: tile 1 offsets 10,11,14,15; tile 2 offsets 8,12
    assert upsample_thumbnail(torch.tensor([6]), 4, (3, 2)).tolist() == [26, 27, 30, 31, 40, 44]
    # cell (3,3) -> rows 6-7, columns 9-11: tile 5, offsets 9,10,11,13,14,15
    assert upsample_thumbnail(torch.tensor([15]), 4, (3, 2)).tolist() == [89, 90, 91, 93, 94, 95]
    # every thumbnail cell together covers every tile token exactly once
    everything = upsample_thumbnail(torch.arange(16), 4, (3, 2))
    assert everything.tolist() == list(range(6 * 16))


def test_upsample_single_tile_and_empty():
    assert upsample_thumbnail(torch.tensor([5]), 4, (1, 1)).tolist() == [5]
    assert upsample_thumbnail(torch.empty(0, dtype=torch.long), 4, (3, 2)).numel() == 0


def ascending_f(n=16):
    return torch.arange(n, dtype=torch.float32) / n  # F order: 15, 14, ..., 0


def test_thumb_budget_single_tile():
    # L = 16, target 8; round(0.5 * 16) - |IVC_th| = 6 foreground picks: 15..10; seeds inside them; prio = 8
    sel, fg = thumb_budget(torch.tensor([0, 5]), torch.empty(0, dtype=torch.long), torch.tensor([15]), ascending_f(),
                           (1, 1), 0.5)
    assert sel.tolist() == [0, 5, 10, 11, 12, 13, 14, 15]
    assert fg.tolist() == [10, 11, 12, 13, 14, 15]


def test_thumb_budget_2x1_overflow_keeps_lowest_indices():
    # L = 48, target 24. fg = 15..10 -> thumbnail 42..47; up = tiles {12..15, 24..31}; IVC_tl 0,1,2,16,17,18;
    # IVC_th 0, 5 -> 32, 37; seed 15 -> 47. |prio| = 26 > 24: drop the two highest indices (46, 47).
    sel, _ = thumb_budget(torch.tensor([0, 5]), torch.tensor([0, 1, 2, 16, 17, 18]), torch.tensor([15]),
                          ascending_f(), (2, 1), 0.5)
    expected = [0, 1, 2, 12, 13, 14, 15, 16, 17, 18] + list(range(24, 32)) + [32, 37, 42, 43, 44, 45]
    assert sel.tolist() == expected and len(expected) == 24


def test_thumb_budget_deficit_fills_from_the_thumbnail():
    # IVC_th has 10 >= round(0.5 * 16) tokens: no foreground, nothing up-sampled. prio = 10 + IVC_tl 0..9 = 20 < 24:
    # fill 4 thumbnail tokens in F order (15, 14, 13, 12 -> 47, 46, 45, 44).
    sel, fg = thumb_budget(torch.arange(10), torch.arange(10), torch.tensor([3]), ascending_f(), (2, 1), 0.5)
    assert sel.tolist() == list(range(10)) + list(range(32, 42)) + [44, 45, 46, 47]
    assert fg.tolist() == [44, 45, 46, 47]
    # without tile IVC the thumbnail runs out: kept stays below the target (16 < 24)
    sel, _ = thumb_budget(torch.arange(10), torch.empty(0, dtype=torch.long), torch.tensor([3]), ascending_f(),
                          (2, 1), 0.5)
    assert sel.tolist() == list(range(32, 48))


def test_thumb_budget_3x2_foreground_maps_to_all_six_tiles():
    # L = 112, target 56: fg = 8 thumbnail tokens (15..8), each up-sampled to 6 tile tokens: 8 + 48 = 56
    sel, _ = thumb_budget(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.tensor([15]),
                          ascending_f(), (3, 2), 0.5)
    up = upsample_thumbnail(torch.arange(8, 16), 4, (3, 2)).tolist()
    assert len(up) == 48 and sel.tolist() == up + list(range(96 + 8, 112))


# --- InternVL: tiling recovery --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,tiles,tile_px,max_tiles,grid", [
    ((84, 112), 7, 112, None, (3, 2)),
    ((140, 84), 7, 112, None, (2, 3)),
    ((84, 112), 7, 112, 6, (3, 2)),
    ((600, 800), 13, 448, None, (4, 3)),
    ((448, 448), 1, 448, None, (1, 1)),
    ((300, 1200), 5, 448, None, (4, 1)),
])
def test_tile_grid_recovers_the_processor_canvas(size, tiles, tile_px, max_tiles, grid):
    assert tile_grid(size, tiles, tile_px, max_tiles) == grid


def test_tile_grid_agrees_with_the_processor_routine():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    for h, w in [(480, 640), (1080, 1920), (700, 300), (1000, 1000), (333, 1500)]:
        gw, gh = get_optimal_tiled_canvas((h, w), (448, 448), 1, 12)
        if gw * gh > 1:
            assert tile_grid((h, w), gw * gh + 1, 448) == (gw, gh)
            assert tile_grid((h, w), gw * gh + 1, 448, max_tiles=12) == (gw, gh)


def test_tile_grid_raises_when_no_canvas_matches():
    with pytest.raises(ValueError, match="tiling"):
        tile_grid((1000, 1000), 7, 448)
    with pytest.raises(ValueError, match="tiling"):
        tile_grid((84, 112), 7, 112, max_tiles=12)  # with 12 tiles allowed the processor picks another canvas
