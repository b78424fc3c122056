"""`ivcp visualize`: cell colours read back from the PNG match the selection (hand-made records and tiny models)."""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

import ivcprune
from ivcprune.core.selection import ImageRecord
from ivcprune.testing import load_processor, tiny_checkpoint
from ivcprune.tools import visualize as vis

GRAY = (128, 128, 128)


def expected(token: int, record: ImageRecord, base=GRAY) -> tuple:
    if token not in record.kept:
        return tuple(int(v * vis.DIM) for v in base)
    role = vis.role_of(record).get(token)
    if role is None:
        return base
    return Image.blend(Image.new("RGB", (1, 1), base), Image.new("RGB", (1, 1), vis.ROLE_COLORS[role]),
                       vis.TINT).getpixel((0, 0))


def centre(rendering, row, col, box):
    x, y = rendering.placements[(row, col)]
    return rendering.image.getpixel((x + (box[0] + box[2]) // 2, y + (box[1] + box[3]) // 2))


def check_cells(rendering, record, base=GRAY):
    for row, panel in enumerate(rendering.panels):
        for tok, box in panel.cells.items():
            got = centre(rendering, row, 0, box)
            want = expected(tok, record, base)
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (tok, got, want)


def test_roles_and_dimming_on_a_hand_made_record(tmp_path):
    record = ImageRecord(start=10, length=6, grid=(1, 2, 3), kept=[10, 12, 13, 14, 15], ivc_cos=[10], ivc_sin=[12],
                         seeds=[13], foreground=[15])
    panels = vis.layout(Image.new("RGB", (60, 40), GRAY), record, "qwen2_vl")
    assert len(panels) == 1 and len(panels[0].cells) == 6
    cell = panels[0].cells
    assert cell[10][:2] == (0, 0) and cell[13][1] > 0 and cell[13][0] == 0  # raster order: 2 rows x 3 columns
    maps = {"cos": {t: float(t) for t in range(10, 16)}}
    rendering = vis.render(panels, record, maps, "test")
    check_cells(rendering, record)
    assert centre(rendering, 0, 0, cell[11]) == (32, 32, 32)  # pruned: a quarter of the brightness
    assert centre(rendering, 0, 0, cell[14]) == GRAY  # kept without a role: untouched
    # heat map: lowest value is viridis' first colour, highest its last
    assert centre(rendering, 0, 1, cell[10]) == (68, 1, 84)
    assert centre(rendering, 0, 1, cell[15]) == (253, 231, 36)
    rendering.image.save(tmp_path / "hand.png")
    assert Image.open(tmp_path / "hand.png").getpixel(
        (rendering.placements[(0, 0)][0] + 2, rendering.placements[(0, 0)][1] + 2)) is not None


def test_internvl_tiles_are_placed_row_major_with_the_thumbnail_apart():
    t = 4  # 2x2 tokens per tile; 2x1 canvas -> 3 tiles in all
    record = ImageRecord(start=0, length=3 * t, grid=(2, 1))
    tiles, thumb = vis.layout(Image.new("RGB", (80, 40), GRAY), record, "internvl", tile_tokens=t)
    w = tiles.cells[0][2]  # one cell's width
    assert tiles.cells[1][:2] == (w, 0) and tiles.cells[2][:2] == (0, w)  # tile 0 is the left 2x2 block
    assert tiles.cells[4][:2] == (2 * w, 0)  # tile 1 starts at canvas column 2
    assert sorted(thumb.cells) == [8, 9, 10, 11]


def _tiny(family):
    import transformers as tf

    classes = {"qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration, "internvl": tf.InternVLForConditionalGeneration,
               "llava": tf.LlavaForConditionalGeneration, "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
               "qwen3_vl_moe": tf.Qwen3VLMoeForConditionalGeneration}
    kwargs = {"qwen2_5_vl": {"max_pixels": 64 * 28 * 28}}.get(family, {})
    path = tiny_checkpoint(family, **kwargs)
    return classes[family].from_pretrained(path).eval(), load_processor(path), path


@pytest.mark.parametrize("family,method", [("qwen2_5_vl", "ivcp"), ("qwen2_5_vl", "grid+ivc"), ("internvl", "ivcp"),
                                           ("llava", "fastv"), ("qwen3_vl", "ivcp"), ("qwen3_vl_moe", "grid+ivc")])
def test_tiny_model_cells_match_the_selection(family, method):
    model, proc, _ = _tiny(family)
    image = Image.new("RGB", (300, 200), GRAY)
    rendering, sel = vis.visualize(model, proc, image, "Where is the red circle?", ivcprune.make_method(method, 2, 0.5))
    record = sel.images[0][0]
    assert len(record.kept) == sel.kept_image_tokens[0] < record.length
    check_cells(rendering, record)
    cells = [t for p in rendering.panels for t in p.cells]
    assert sorted(cells) == list(range(record.start, record.end))  # every token drawn exactly once
    if family == "internvl":
        assert [p.title for p in rendering.panels][1] == "thumbnail" and len(rendering.panels) == 2


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_cli_writes_a_png(tmp_path, family):
    _, _, path = _tiny(family)
    Image.new("RGB", (168, 140), GRAY).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    rc = vis.cli_main(["--checkpoint", str(path), "--image", str(tmp_path / "in.png"), "--prompt", "Where?",
                       "--method", "fastv+ivc", "--layer", "2", "--retention", "0.5", "--out", str(out)])
    assert rc == 0 and Image.open(out).size[0] > 300


# --------------------------------------------------------------------------------------------- DeepSeek-VL2
ORANGE = (200, 120, 40)  # picture colour, distinct from the processor's (127, 127, 127) letterbox


@pytest.fixture(scope="module")
def deepseek_checkpoint(tmp_path_factory):
    from ivcprune.models.deepseek_vl2 import make_tiny_deepseek_vl2

    return make_tiny_deepseek_vl2(tmp_path_factory.mktemp("dsvl2"), "tiny")


def test_deepseek_global_and_local_views_match_the_selection(deepseek_checkpoint):
    """768x384 -> 2x1 tiles: the global view is letterboxed (rows 4-9 picture), the local canvas is all picture."""
    model, proc = vis._load(argparse.Namespace(checkpoint=str(deepseek_checkpoint), model=None))
    image = Image.new("RGB", (768, 384), ORANGE)
    rendering, sel = vis.visualize(model, proc, image, "Where is the red circle?", ivcprune.make_method("ivcp", 2, 0.5))
    record = sel.images[0][0]
    start = record.start
    assert record.grid == (2, 1) and record.length == 14 * 15 + 1 + 14 * 29
    glob, local = rendering.panels
    assert glob.title == "global view" and local.title == "local 2x1 tiles"
    # token indices: global (i, j) at start + 15 i + j, local (r, c) at start + 211 + r * 29 + c; newlines undrawn
    gw, lw = glob.cells[start][2], local.cells[start + 211][2]
    assert glob.cells[start + 15 * 3 + 5][:2] == (5 * gw, 3 * gw)
    assert local.cells[start + 211 + 2 * 29 + 20][:2] == (20 * lw, 2 * lw)
    newlines = {start + 15 * i + 14 for i in range(14)} | {start + 211 + r * 29 + 28 for r in range(14)}
    drawn = set(glob.cells) | set(local.cells)
    assert len(drawn) == 196 + 392 and drawn | newlines | {start + 210} == set(range(record.start, record.end))
    # every cell away from the letterbox edge reads back as its base colour, tinted or dimmed
    seen = {"ivc_cos": 0, "pruned": 0}
    for row, panel in enumerate(rendering.panels):
        for tok, box in panel.cells.items():
            i = (tok - start) // 15
            if row == 0 and i in (3, 10):
                continue  # the picture's edge crosses these rows: bicubic blend of picture and padding
            base = (127, 127, 127) if row == 0 and not 4 <= i <= 9 else ORANGE
            got, want = centre(rendering, row, 0, box), expected(tok, record, base)
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (row, tok, got, want)
            if tok not in record.kept:
                seen["pruned"] += 1
            elif vis.role_of(record).get(tok) == "ivc_cos":
                seen["ivc_cos"] += 1
    assert seen["ivc_cos"] > 0 and seen["pruned"] > 0


def test_deepseek_cli_writes_a_png(deepseek_checkpoint, tmp_path):
    Image.new("RGB", (500, 300), GRAY).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    rc = vis.cli_main(["--checkpoint", str(deepseek_checkpoint), "--image", str(tmp_path / "in.png"),
                       "--prompt", "Where?", "--method", "fastv+ivc", "--layer", "2", "--retention", "0.5",
                       "--out", str(out)])
    assert rc == 0 and Image.open(out).size[0] > 300
