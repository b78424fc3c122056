"""InternVL 2.5 / 3 adapter for the native ``InternVLForConditionalGeneration`` (``-hf`` checkpoints).

An image is n tiles of T_t tokens (config.image_seq_length) between ``<img>`` and ``</img>``: with n > 1 the
w_b x h_b crops in row-major order, then the thumbnail. The adapter describes the tiles (``image_groups``) and
the thumbnail view; IVC-Prune's THUMB-BUDGET policy (``ivcprune.methods.ivcp``) decides what to keep.

How the tiling (w_b, h_b) reaches the adapter: the caller passes ``image_sizes`` — the original (height,
width) of every image, in prompt order over the batch — to ``forward``/``generate``. It is a parameter of the
stock forward (unused there), so ``generate`` accepts it and the unpruned model ignores it. The adapter then
re-runs the processor's own canvas routine (GotOcr2 ``get_optimal_tiled_canvas``) and keeps the canvas whose
tile count matches the prompt; see :func:`tile_grid`. A single-tile image needs nothing.
"""

from __future__ import annotations

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, RequestInputs, TokenGroup, register_adapter, token_runs

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
    family = "internvl"
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

    def image_groups(self, image: ImageRecord) -> list[TokenGroup]:
        """Each tile is its own grid: the crops ("tile"), then the thumbnail (a single-tile image is one)."""
        t = self.tile_tokens
        starts = range(0, image.length, t)
        return [TokenGroup("thumbnail" if i + t >= image.length else "tile", torch.arange(i, i + t)) for i in starts]

    def image_views(self, image: ImageRecord) -> dict[str, torch.Tensor]:
        """The span and the thumbnail (the last tile). A multi-tile image needs its tiling (``image.grid``)."""
        if image.grid is None:
            raise ValueError(
                f"InternVL image at index {image.start} has {image.length // self.tile_tokens} tiles but its tiling "
                "(w_b, h_b) is unknown: pass image_sizes=[(height, width), ...] of the original images to "
                "forward/generate"
            )
        return {"span": torch.arange(image.length), "thumbnail": torch.arange(image.length - self.tile_tokens,
                                                                              image.length)}


def image_sizes(images) -> torch.Tensor:
    """The ``image_sizes`` kwarg for PIL images in prompt order: one (height, width) row per image."""
    return torch.tensor([[im.height, im.width] for im in images], dtype=torch.long).reshape(-1, 2)
