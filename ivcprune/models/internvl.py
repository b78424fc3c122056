"""InternVL 2.5 / 3 adapter for the native ``InternVLForConditionalGeneration`` (``-hf`` checkpoints).

An image is n tiles of T_t tokens (config.image_seq_length) between ``<img>`` and ``</img>``: with n > 1 the
w_b x h_b crops in row-major order, then the thumbnail. IVC runs per tile (thumbnail included), the
foreground on the thumbnail only, and THUMB-BUDGET maps it onto the tiles (ALGORITHM §2, §4.2).

How the tiling (w_b, h_b) reaches the adapter: the caller passes ``image_sizes`` — the original (height,
width) of every image, in prompt order over the batch — to ``forward``/``generate``. It is a parameter of the
stock forward (unused there), so ``generate`` accepts it and the unpruned model ignores it. The adapter then
re-runs the processor's own canvas routine (GotOcr2 ``get_optimal_tiled_canvas``) and keeps the canvas whose
tile count matches the prompt; see :func:`tile_grid`. A single-tile image needs nothing.
"""

from __future__ import annotations

import torch

from ivcprune.core import policies
from ivcprune.core.foreground import foreground_scores
from ivcprune.core.ranking import count
from ivcprune.core.rope import ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, FamilySettings, RequestInputs, register_adapter, token_runs

INTERNVL_SETTINGS = FamilySettings(
    family="internvl",
    policy="thumb_budget",
    retention=0.5,
    ivc_fraction=0.10,
    seed_fraction=0.01,
    query_offset=2,
    keys="prompt",
    default_layers=((32, 16),),  # InternVL2.5-8B: K = 16; other depths floor(N_L / 2), untuned
)

MAX_TILES_SEARCHED = 64  # largest max_patches tried when the processor's limit is not known


def tile_grid(image_size, tiles: int, tile_px: int, max_tiles: int | None = None) -> tuple[int, int]:
    """(w_b, h_b) of an image of (height, width) ``image_size`` that the processor cut into ``tiles`` tiles.

    Uses the processor's canvas routine (min 1 tile). With ``max_tiles`` known, that canvas must match the tile
    count; otherwise every limit from tiles - 1 to MAX_TILES_SEARCHED is tried and the matching canvases must
    agree, else the tiling is ambiguous and this raises.
    """
    if tiles == 1:
        return (1, 1)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    h, w = (int(x) for x in image_size)
    crops = tiles - 1
    limits = [max_tiles] if max_tiles is not None else range(max(crops, 2), MAX_TILES_SEARCHED + 1)
    found = set()
    for m in limits:
        grid = tuple(int(x) for x in get_optimal_tiled_canvas((h, w), (tile_px, tile_px), 1, m))
        if grid[0] * grid[1] == crops:
            found.add(grid)
    if len(found) != 1:
        raise ValueError(
            f"cannot recover the InternVL tiling of a {w}x{h} image cut into {tiles} tiles "
            f"({'no' if not found else 'several'} matching canvases: {sorted(found)}); pass the original image size "
            "in image_sizes and the processor's max_patches"
        )
    return found.pop()


@register_adapter("InternVLForConditionalGeneration", "InternVLModel")
class InternVLAdapter(FamilyAdapter):
    settings = INTERNVL_SETTINGS
    max_tiles: int | None = None  # the processor's max_patches, when the caller knows it

    @property
    def tile_tokens(self) -> int:
        return int(self.model.config.image_seq_length)

    @property
    def tile_px(self) -> int:
        size = self.model.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def image_structure(self, kwargs: dict) -> object:
        return kwargs.get("image_sizes")

    def image_spans(self, request: RequestInputs) -> list[list[ImageRecord]]:
        t = self.tile_tokens
        sizes = request.structure
        sizes = None if sizes is None else [tuple(int(x) for x in row) for row in torch.as_tensor(sizes).tolist()]
        cursor, spans = 0, []
        for b in range(request.input_ids.shape[0]):
            is_image = (request.input_ids[b] == self.model.config.image_token_id) & request.valid[b]
            records = []
            for start, length in token_runs(is_image):  # <img>...</img> delimit images: one run per image
                if length % t:
                    raise ValueError(f"sample {b}: a run of {length} image tokens is not a whole number of "
                                     f"{t}-token tiles (config.image_seq_length)")
                tiles = length // t
                grid = (1, 1) if tiles == 1 else None
                if tiles > 1 and sizes is not None:
                    if cursor >= len(sizes):
                        raise ValueError(f"image_sizes has {len(sizes)} rows but the prompt holds more images")
                    grid = tile_grid(sizes[cursor], tiles, self.tile_px, self.max_tiles)
                records.append(ImageRecord(start=start, length=length, grid=grid))
                cursor += 1
            spans.append(records)
        if sizes is not None and cursor != len(sizes):
            raise ValueError(f"image_sizes has {len(sizes)} rows for {cursor} images in the prompt")
        return spans

    def image_groups(self, image: ImageRecord) -> list[torch.Tensor]:
        """Each tile, the thumbnail included, is its own IVC group."""
        t = self.tile_tokens
        return [torch.arange(i, i + t) for i in range(0, image.length, t)]

    def select_thumb_budget(self, ctx, image: ImageRecord, settings: FamilySettings) -> None:
        """IVC per tile, seeds and F on the thumbnail, then THUMB-BUDGET (ALGORITHM §2 F7)."""
        a, length, t = image.start, image.length, self.tile_tokens
        if image.grid is None:
            raise ValueError(
                f"InternVL image at index {a} has {length // t} tiles but its tiling (w_b, h_b) is unknown: pass "
                "image_sizes=[(height, width), ...] of the original images to forward/generate"
            )
        queries = ctx.queries(image, settings.query_offset)
        cols = torch.arange(a, a + length)
        if queries.numel() == 0 or ctx.values is None:
            image.kept = cols.tolist()
            return
        c, s = ivc_scores(ctx.positions[:, a:a + length].cpu(), ctx.inv_freq)
        ivc_cos, ivc_sin = ivc_select(c, s, self.image_groups(image), settings.ivc_fraction, settings.ivc_fraction)
        ivc = torch.cat([ivc_cos, ivc_sin]).unique()
        thumb0 = length - t
        keys = cols if settings.keys == "span" else ctx.valid_positions()
        n_seed = max(1, count(t, settings.seed_fraction))
        seed_cols, fg = foreground_scores(ctx.values, queries, cols[thumb0:], keys, n_seed)
        selected, foreground = policies.thumb_budget(
            ivc[ivc >= thumb0] - thumb0, ivc[ivc < thumb0], seed_cols.cpu(), fg.cpu(), image.grid, settings.retention
        )
        image.kept = (selected + a).tolist()
        image.ivc_cos = (ivc_cos + a).tolist()
        image.ivc_sin = (ivc_sin + a).tolist()
        image.seeds = sorted((seed_cols.cpu() + a + thumb0).tolist())
        image.foreground = (foreground + a).tolist()


def image_sizes(images) -> torch.Tensor:
    """The ``image_sizes`` kwarg for PIL images in prompt order: one (height, width) row per image."""
    return torch.tensor([[im.height, im.width] for im in images], dtype=torch.long).reshape(-1, 2)
