"""Where each image's tokens sit in the sequence (docs/DEEPSEEK_VL2.md §4), for the model and for pruning.

One image with local tiling (tw across, th down) and g = 14 tokens per tile side becomes
``[global g x (g+1) incl. newline column] [separator] [local (g*th) x (g*tw+1) incl. newline column]``
with ``global_view_pos == "head"`` (all releases), or local/separator/global otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOKENS_PER_SIDE = 14


def num_image_tokens(tw: int, th: int, g: int = TOKENS_PER_SIDE) -> int:
    """N(tw, th) = g(g+1) + 1 + g*th*(g*tw + 1); 421 for a single 1x1 tiling."""
    return g * (g + 1) + 1 + g * th * (g * tw + 1)


@dataclass(frozen=True)
class ImageSpan:
    """One image's run of ``<image>`` positions in one sample (absolute indices into the row)."""

    start: int
    n_w: int
    n_h: int
    g: int = TOKENS_PER_SIDE
    global_first: bool = True
    image_size: tuple[int, int] | None = None  # original (width, height) in pixels, when known (PIL's order;
    # the image_sizes kwarg it is read from holds (height, width) rows)

    @property
    def length(self) -> int:
        return num_image_tokens(self.n_w, self.n_h, self.g)

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def local_width(self) -> int:
        """Columns of the stitched local grid, newline column included."""
        return self.g * self.n_w + 1

    @property
    def global_start(self) -> int:
        return self.start if self.global_first else self.start + self.g * self.n_h * self.local_width + 1

    @property
    def separator(self) -> int:
        return self.start + self.g * (self.g + 1) if self.global_first else self.global_start - 1

    @property
    def local_start(self) -> int:
        return self.separator + 1 if self.global_first else self.start

    def global_index(self, i: int, j: int) -> int:
        """Global view cell (row i, col j); j == g is the row's newline."""
        return self.global_start + i * (self.g + 1) + j

    def local_index(self, r: int, c: int) -> int:
        """Stitched local grid cell (row r < g*n_h, col c <= g*n_w); c == g*n_w is the newline."""
        return self.local_start + r * self.local_width + c

    def local_tile_token(self, tile: int, t: int) -> int:
        """Position of projected token t (row-major in 14x14) of local tile ``tile`` (row-major tiles)."""
        ty, tx = divmod(tile, self.n_w)
        ti, tj = divmod(t, self.g)
        return self.local_index(ty * self.g + ti, tx * self.g + tj)

    def newline_positions(self) -> list[int]:
        glob = [self.global_index(i, self.g) for i in range(self.g)]
        loc = [self.local_index(r, self.g * self.n_w) for r in range(self.g * self.n_h)]
        return glob + loc


def image_spans(
    images_seq_mask: torch.Tensor,
    images_spatial_crop: torch.Tensor,
    image_sizes: torch.Tensor | None = None,
    g: int = TOKENS_PER_SIDE,
    global_first: bool = True,
) -> list[list[ImageSpan]]:
    """Per sample, the spans of its images in order; checks each run has exactly N(tw, th) positions."""
    out: list[list[ImageSpan]] = []
    for b in range(images_seq_mask.shape[0]):
        positions = torch.nonzero(images_seq_mask[b], as_tuple=False).flatten().tolist()
        spans: list[ImageSpan] = []
        cursor = 0
        for k, (tw, th) in enumerate(images_spatial_crop[b].tolist()):
            if tw == 0 or th == 0:
                break
            if cursor >= len(positions):
                raise ValueError(f"sample {b} image {k}: crop ({tw},{th}) but no <image> positions left")
            size = None
            if image_sizes is not None:
                h, w = image_sizes[b, k].tolist()  # (height, width) rows, the project-wide order
                size = (int(w), int(h)) if w and h else None
            span = ImageSpan(positions[cursor], int(tw), int(th), g, global_first, size)
            run = positions[cursor : cursor + span.length]
            if len(run) != span.length or run[-1] - run[0] + 1 != span.length:
                raise ValueError(f"sample {b} image {k}: <image> run does not match N({tw},{th})={span.length}")
            spans.append(span)
            cursor += span.length
        if cursor != len(positions):
            raise ValueError(f"sample {b}: {len(positions)} image positions but crops account for {cursor}")
        out.append(spans)
    return out
