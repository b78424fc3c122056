"""`ivcp visualize`: what a method kept of one image, drawn over the image's token grid, beside the IVC position maps.

Kept tokens are tinted by role (IVC-cos, IVC-sin, seed, foreground; other kept tokens stay as they are) and pruned
tokens are dimmed. Every panel is drawn with exact integer cell boxes, so a test can read a cell's colour back.
Layouts follow the family: Qwen's merged grid (Qwen2, 2.5 and 3-VL), LLaVA's centre-cropped square, InternVL's
tiles plus thumbnail, DeepSeek-VL2's letterboxed global view plus its tiled local view (newline tokens are not cells).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace

import torch
from PIL import Image, ImageDraw, ImageOps

import ivcprune
from ivcprune.core.rope import ivc_scores, ivc_scores_applied
from ivcprune.core.selection import ImageRecord

ROLE_COLORS = {  # drawn in this priority when a token has several roles
    "seed": (255, 215, 0),
    "ivc_cos": (230, 25, 75),
    "ivc_sin": (0, 130, 200),
    "foreground": (60, 180, 75),
}
ROLE_LABELS = {"seed": "seed", "ivc_cos": "IVC-cos", "ivc_sin": "IVC-sin", "foreground": "foreground"}
TINT = 0.55  # share of the role colour in a kept cell
DIM = 0.25  # brightness left to a pruned cell
PANEL_PX = 336  # longest side of a panel
MARGIN, TITLE_H = 8, 16
BACKGROUND = (255, 255, 255)
DEEPSEEK_TILE_PX = 384  # side of DeepSeek-VL2's global view and of each local tile
DEEPSEEK_PAD = (127, 127, 127)  # the processor's letterbox colour for image_mean 0.5 (int(0.5 * 255))


@dataclass
class Panel:
    """One grid of tokens over one frame: ``cells`` maps absolute token index -> (x0, y0, x1, y1) in the frame."""

    title: str
    frame: Image.Image
    cells: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)


@dataclass
class Rendering:
    image: Image.Image
    placements: dict[tuple[int, int], tuple[int, int]]  # (panel row, column) -> top-left of the panel frame
    panels: list[Panel]


# --------------------------------------------------------------------------------------------- layouts
def _grid_panel(title: str, frame: Image.Image, rows: int, cols: int, tokens: list[int]) -> Panel:
    """Resize ``frame`` to whole cells and give token tokens[r * cols + c] the cell (r, c)."""
    cell = max(2, PANEL_PX // max(rows, cols))
    frame = frame.convert("RGB").resize((cols * cell, rows * cell), Image.BILINEAR)
    cells = {tok: ((i % cols) * cell, (i // cols) * cell, (i % cols + 1) * cell, (i // cols + 1) * cell)
             for i, tok in enumerate(tokens)}
    return Panel(title, frame, cells)


def _centre_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def layout(image: Image.Image, record: ImageRecord, family: str, tile_tokens: int | None = None,
           span=None, pad_color: tuple[int, int, int] = DEEPSEEK_PAD) -> list[Panel]:
    """The panels of one image: where each of its tokens sits on the picture.

    ``span`` (DeepSeek-VL2 only) is the image's ``ImageSpan``; by default the record's own ``layout``.
    """
    tokens = list(range(record.start, record.end))
    if family == "deepseek_vl2":
        span = span if span is not None else getattr(record, "layout", None)
        if span is None:
            raise ValueError("a DeepSeek-VL2 image needs its ImageSpan (record.layout or span=)")
        return _deepseek_panels(image, span, pad_color)
    if family == "internvl":
        return _internvl_panels(image, record, tokens, tile_tokens or record.length)
    if family == "llava":
        side = math.isqrt(record.length)
        if side * side == record.length:
            return [_grid_panel("image (centre crop)", _centre_square(image), side, side, tokens)]
    else:
        from ivcprune.methods.grid import span_shape

        shape = span_shape(record)
        if shape is not None:
            return [_grid_panel("image", image, *shape, tokens)]
    side = math.isqrt(record.length)
    rows, cols = (side, side) if side * side == record.length else (1, record.length)
    return [_grid_panel("image (layout unknown)", image, rows, cols, tokens)]


def _internvl_panels(image: Image.Image, record: ImageRecord, tokens: list[int], t: int) -> list[Panel]:
    """Tiles 0..n-2 cover a w_b x h_b canvas in row-major order, the last tile is the thumbnail
    (docs/ALGORITHM.md §4.2)."""
    g = math.isqrt(t)
    n = record.length // t
    thumb = _grid_panel("thumbnail", image, g, g, tokens[(n - 1) * t:])
    if n == 1:
        thumb.title = "single tile"
        return [thumb]
    w_b, h_b = record.grid if record.grid is not None else (n - 1, 1)
    canvas_tokens = [0] * ((n - 1) * t)
    for tile in range(n - 1):
        ty, tx = divmod(tile, w_b)
        for off in range(t):
            r, c = divmod(off, g)
            canvas_tokens[(ty * g + r) * (w_b * g) + tx * g + c] = tokens[tile * t + off]
    tiles = _grid_panel(f"{w_b}x{h_b} tiles", image, h_b * g, w_b * g, canvas_tokens)
    return [tiles, thumb]


def _deepseek_panels(image: Image.Image, span, pad_color: tuple[int, int, int]) -> list[Panel]:
    """Global view and local tiles, each letterboxed exactly as the processor does (``ImageOps.pad``, bicubic).

    The global 14x14 cells map to 28-px squares of the 384-px square; the local grid covers the n_w x n_h tile
    canvas. Newline columns and the separator have no place on the picture, so they get no cell.
    """
    g, side = span.g, DEEPSEEK_TILE_PX
    pad = dict(method=Image.Resampling.BICUBIC, color=pad_color)
    rgb = image.convert("RGB")
    glob = ImageOps.pad(rgb, (side, side), **pad)
    glob_tokens = [span.global_index(i, j) for i in range(g) for j in range(g)]
    rows, cols = g * span.n_h, g * span.n_w
    local = ImageOps.pad(rgb, (span.n_w * side, span.n_h * side), **pad)
    local_tokens = [span.local_index(r, c) for r in range(rows) for c in range(cols)]
    return [_grid_panel("global view", glob, g, g, glob_tokens),
            _grid_panel(f"local {span.n_w}x{span.n_h} tiles", local, rows, cols, local_tokens)]


# --------------------------------------------------------------------------------------------- drawing
def role_of(record: ImageRecord) -> dict[int, str]:
    roles: dict[int, str] = {}
    for role in reversed(list(ROLE_COLORS)):  # later assignments win: seed has the highest priority
        for tok in getattr(record, "seeds" if role == "seed" else role):
            roles[tok] = role
    return roles


def draw_selection(panel: Panel, record: ImageRecord) -> Image.Image:
    """The frame with kept cells tinted by role and pruned cells dimmed."""
    out = panel.frame.copy()
    kept, roles = set(record.kept), role_of(record)
    for tok, box in panel.cells.items():
        region = out.crop(box)
        if tok not in kept:
            region = Image.eval(region, lambda v: int(v * DIM))
        elif tok in roles:
            region = Image.blend(region, Image.new("RGB", region.size, ROLE_COLORS[roles[tok]]), TINT)
        out.paste(region, box[:2])
    _grid_lines(out, panel)
    return out


def draw_map(panel: Panel, values: dict[int, float]) -> Image.Image:
    """A heat map of per-token values (viridis, min-max normalised) on the panel's cells."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    out = Image.new("RGB", panel.frame.size, BACKGROUND)
    vals = [values[t] for t in panel.cells if t in values]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    draw = ImageDraw.Draw(out)
    for tok, box in panel.cells.items():
        x = (values.get(tok, lo) - lo) / (hi - lo) if hi > lo else 0.5
        r, g, b, _ = cmap(x)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(int(r * 255), int(g * 255), int(b * 255)))
    return out


def _grid_lines(img: Image.Image, panel: Panel) -> None:
    """One-pixel lines on the right/bottom edge of every cell (cell centres stay untouched)."""
    if not panel.cells:
        return
    box = next(iter(panel.cells.values()))
    if box[2] - box[0] < 6:
        return
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in panel.cells.values():
        draw.line((x1 - 1, y0, x1 - 1, y1 - 1), fill=(40, 40, 40))
        draw.line((x0, y1 - 1, x1 - 1, y1 - 1), fill=(40, 40, 40))


def render(panels: list[Panel], record: ImageRecord, maps: dict[str, dict[int, float]], header: str = "",
           stages: list[tuple[str, ImageRecord]] = ()) -> Rendering:
    """One row per panel: the selection (and one column per later stage of a multi-stage method), then one column
    per IVC map; a legend and header on top."""
    columns = [("kept", record), *stages] + list(maps.items())
    widths = [max(p.frame.width for p in panels)] * len(columns)
    heights = [p.frame.height for p in panels]
    top = MARGIN + 2 * TITLE_H
    width = MARGIN + sum(w + MARGIN for w in widths)
    height = top + sum(h + TITLE_H + MARGIN for h in heights)
    canvas = Image.new("RGB", (max(width, 520), height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN // 2), header, fill=(0, 0, 0))
    x = MARGIN
    for role, color in ROLE_COLORS.items():
        draw.rectangle((x, MARGIN + TITLE_H, x + 10, MARGIN + TITLE_H + 10), fill=color)
        draw.text((x + 14, MARGIN + TITLE_H), ROLE_LABELS[role], fill=(0, 0, 0))
        x += 14 + 8 * len(ROLE_LABELS[role]) + 12
    draw.text((x, MARGIN + TITLE_H), "dim = pruned", fill=(0, 0, 0))
    placements = {}
    y = top
    for row, panel in enumerate(panels):
        x = MARGIN
        for col, (name, values) in enumerate(columns):
            img = draw_selection(panel, values) if isinstance(values, ImageRecord) else draw_map(panel, values)
            title = f"{panel.title}: {name}"
            draw.text((x, y), title, fill=(0, 0, 0))
            canvas.paste(img, (x, y + TITLE_H))
            placements[(row, col)] = (x, y + TITLE_H)
            x += widths[col] + MARGIN
        y += panel.frame.height + TITLE_H + MARGIN
    return Rendering(canvas, placements, panels)


# --------------------------------------------------------------------------------------------- model run
def visualize(model, processor, image: Image.Image, prompt: str, method, image_index: int = 0) -> tuple[Rendering, object]:
    """Run one prefill under ``method`` and draw what it kept of the ``image_index``-th image of sample 0."""
    from ivcprune.testing import tiny_inputs

    adapter = ivcprune.models.get_adapter(model)
    family = adapter.family
    if family == "deepseek_vl2":  # its own processor: one user turn, <image> first, original sizes included
        inputs = processor(prompts=f"{processor.image_token}\n{prompt}", images=[image])
    else:
        inputs = tiny_inputs(family, processor, image, prompt)
    if family == "internvl":
        from ivcprune.models.internvl import image_sizes

        inputs["image_sizes"] = image_sizes([image])
    seen = {}

    def grab(module, args, kwargs):
        if "positions" not in seen:
            length = (kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else args[0]).shape[1]
            seen["positions"] = adapter.positions(kwargs.get("position_ids"), 1, length, "cpu")[:, 0].cpu()

    handle = adapter.text_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), ivcprune.prune(model, method) as trace:
            model(**inputs)
    finally:
        handle.remove()
    sel = trace.last
    if sel is None or not sel.images or len(sel.images[0]) <= image_index:
        raise ValueError("the prompt holds no image for this model (no image tokens were found)")
    record = sel.images[0][image_index]
    positions = seen["positions"]
    axes = adapter.rotary_axes() if getattr(method, "ivc_rule", None) == "applied" else None
    span_positions = positions[:, record.start:record.end]
    c, s = ivc_scores(span_positions, adapter.inv_freq()) if axes is None else \
        ivc_scores_applied(span_positions, adapter.inv_freq(), axes)  # the maps follow the method's IVC rule
    tile_tokens = getattr(adapter, "tile_tokens", None)
    span, pad_color = None, DEEPSEEK_PAD
    if family == "deepseek_vl2":
        spans = getattr(model, "last_image_layout", None) or [[]]
        span = spans[0][image_index] if len(spans[0]) > image_index else None
        pad_color = tuple(getattr(processor, "pad_color", DEEPSEEK_PAD))
    panels = layout(image, record, family, tile_tokens, span=span, pad_color=pad_color)
    maps = {"IVC cos score V": dict(zip(range(record.start, record.end), c.tolist())),
            "IVC sin score U": dict(zip(range(record.start, record.end), s.tolist()))}
    stages = [(f"kept from K={st.layer}", replace(record, kept=st.image_kept[0][image_index])) for st in sel.stages]
    layers = ",".join(str(layer) for layer, _ in sel.schedule)
    final = stages[-1][1] if stages else record
    header = (f"{type(model).__name__} | {sel.method} K={layers} | kept {len(final.kept)}/{record.length} image "
              f"tokens | {prompt[:60]}")
    return render(panels, record, maps, header, stages), sel


def _load(args):

    from ivcprune.testing import load_processor

    path, family = args.checkpoint, None
    if args.model:
        from ivcprune.eval.registry import resolve

        entry = resolve(args.model)
        path, family = entry.checkpoint, entry.family
    from ivcprune.models.loading import checkpoint_model_type, load_vl_model

    try:
        model = load_vl_model(path, dtype=torch.float32, attn="sdpa")
    except ValueError as err:
        raise SystemExit(f"ivcp visualize: {err}") from None
    if family == "deepseek_vl2" or checkpoint_model_type(path) == "deepseek_vl_v2":
        from ivcprune.models.deepseek_vl2 import DeepseekVL2Processor  # the project's own processor

        return model, DeepseekVL2Processor.from_pretrained(path)
    return model, load_processor(path)


def cli_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ivcp visualize", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry model name")
    src.add_argument("--checkpoint", help="local checkpoint folder (Qwen2/2.5/3-VL, LLaVA, InternVL -hf, DeepSeek-VL2)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--method", default="ivcp", help="a registered method (ivcp list methods), e.g. ivcp, fastv+ivc")
    p.add_argument("--layer", type=int, default=None, help="K (default: family default)")
    p.add_argument("--retention", type=float, default=None, help="image-token budget (default: family default)")
    p.add_argument("--out", default="kept_tokens.png")
    args = p.parse_args(argv)
    from ivcprune.methods import make_method

    try:
        method = make_method(args.method, args.layer, args.retention)
    except ValueError as err:
        p.error(str(err))
    model, processor = _load(args)
    image = Image.open(args.image).convert("RGB")
    rendering, sel = visualize(model, processor, image, args.prompt, method)
    rendering.image.save(args.out)
    print(f"wrote {args.out} ({sel.kept_image_tokens[0]}/{sel.image_tokens[0]} image tokens kept)", file=sys.stderr)
    return 0


__all__ = ["cli_main", "visualize", "layout", "render", "draw_selection", "draw_map", "Panel", "Rendering",
           "ROLE_COLORS", "TINT", "DIM"]
