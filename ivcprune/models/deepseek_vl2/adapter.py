"""Adapter for ``DeepseekVL2ForCausalLM``: what a DeepSeek-VL2 image is (docs/DEEPSEEK_VL2.md).

An image is [global 14x15 incl. newlines][separator][local (14 n_h) x (14 n_w + 1) incl. newlines] (global
first in every release). The adapter names those views, the global cells that show the picture (not letterbox),
the structural tokens (newlines, separator) and the grids; IVC-Prune's GLOBAL-LOCAL policy lives with the method.

Values: MLA (small/base) -> the value slice of layer K-1's ``kv_b_proj`` output (its input is the normalised
latent of the whole prompt at prefill); MHA (tiny) -> ``v_proj``. Positions are the 1-D prompt positions; the
rotary frequencies are those of the rope part (θ = 1e4, d_r = 64 on MLA checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivcprune.core.policies import local_rows
from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, RequestInputs, TokenGroup, register_adapter


@dataclass
class DeepseekImage(ImageRecord):
    """An image record that carries its DeepSeek layout (an ``ImageSpan``); ``grid`` is (n_w, n_h)."""

    layout: object = None


def letterbox(size: tuple[int, int] | None, canvas: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the picture inside the square global view, as ``PIL.ImageOps.pad`` places it."""
    if size is None:
        return 0, 0, canvas, canvas
    w, h = (int(v) for v in size)
    if w == h:
        return 0, 0, canvas, canvas
    if w > h:  # wider than the canvas: full width, bands above and below
        new_h = round(h / w * canvas)
        y = round((canvas - new_h) * 0.5)
        return 0, y, canvas, y + new_h
    new_w = round(w / h * canvas)
    x = round((canvas - new_w) * 0.5)
    return x, 0, x + new_w, canvas


def valid_global_cells(size: tuple[int, int] | None, g: int = 14, canvas: int = 384, cell: int = 28) -> torch.Tensor:
    """valid_g: global-view indices i*(g+1)+j of the cells (j < g) whose pixels overlap the picture.

    Cell (i, j) covers [cell*j, cell*(j+1)) x [cell*i, cell*(i+1)); a cell with no overlap is letterbox padding.
    Unknown size: every non-newline cell.
    """
    x0, y0, x1, y1 = letterbox(size, canvas)
    starts = torch.arange(g) * cell
    rows = torch.nonzero((starts < y1) & (starts + cell > y0)).flatten()
    cols = torch.nonzero((starts < x1) & (starts + cell > x0)).flatten()
    return (rows[:, None] * (g + 1) + cols[None, :]).reshape(-1)


@register_adapter("DeepseekVL2ForCausalLM")
class DeepseekVL2Adapter(FamilyAdapter):
    family = "deepseek_vl2"

    @property
    def text_model(self):
        return self.model.language.model

    @property
    def is_mla(self) -> bool:
        return hasattr(self.layers[0].self_attn, "kv_b_proj")

    def value_module(self, layer_idx: int):
        attn = self.layers[layer_idx].self_attn
        return attn.kv_b_proj if self.is_mla else attn.v_proj

    def value_heads(self, output: torch.Tensor) -> torch.Tensor:
        """MLA: kv_b_proj(latent) is (B, 1, S, H*(nope+v)); keep each head's value part -> (B, S, H, v)."""
        if not self.is_mla:
            return super().value_heads(output)
        cfg = self.text_config
        nope = cfg.qk_nope_head_dim
        out = output.reshape(output.shape[0], output.shape[-2], cfg.num_attention_heads, nope + cfg.v_head_dim)
        return out[..., nope:]

    def kv_bytes_per_token(self) -> int:
        """MLA caches the normalised latent plus the shared rotated k_pe: N_L * (kv_lora_rank + d_r) elements."""
        if not self.is_mla:
            return super().kv_bytes_per_token()
        cfg = self.text_config
        size = torch.empty((), dtype=self.text_model.dtype).element_size()
        return self.num_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * size

    # --- structure ---------------------------------------------------------------------------------------------
    def image_structure(self, kwargs: dict) -> object:
        """Per-sample ``ImageSpan`` lists from the processor outputs (None: no image inputs in this call)."""
        return self.model.image_layout(kwargs.get("images_seq_mask"), kwargs.get("images_spatial_crop"),
                                       kwargs.get("image_sizes"))

    def image_spans(self, request: RequestInputs) -> list[list[ImageRecord]]:
        layout = request.structure
        batch = request.input_ids.shape[0]
        if layout is None:
            return [[] for _ in range(batch)]
        spans = []
        for b, sample in enumerate(layout):
            records = []
            for span in sample:
                if not bool(request.valid[b, span.start:span.end].all()):
                    raise ValueError(f"sample {b}: image at {span.start} overlaps padding; images_seq_mask does not "
                                     "match attention_mask")
                records.append(DeepseekImage(start=span.start, length=span.length, grid=(span.n_w, span.n_h),
                                             layout=span))
            spans.append(records)
        return spans

    def image_groups(self, image: ImageRecord) -> list[TokenGroup]:
        """The g x (g+1) global view ("global"), then every row of the stitched local view ("local_row")."""
        span = image.layout
        g0, l0 = span.global_start - span.start, span.local_start - span.start
        glob = TokenGroup("global", torch.arange(g0, g0 + span.g * (span.g + 1)))
        return [glob] + [TokenGroup("local_row", row + l0) for row in local_rows(span.g, (span.n_w, span.n_h))]

    def image_views(self, image: ImageRecord) -> dict[str, torch.Tensor]:
        """span, the global view (newlines included), the local view and the separator (span-relative)."""
        span = image.layout
        g0, l0 = span.global_start - span.start, span.local_start - span.start
        n_local = span.g * span.n_h * (span.g * span.n_w + 1)
        return {"span": torch.arange(image.length), "global": torch.arange(g0, g0 + span.g * (span.g + 1)),
                "local": torch.arange(l0, l0 + n_local), "separator": torch.tensor([span.separator - span.start])}

    def structural_tokens(self, image: ImageRecord) -> torch.Tensor:
        """Span-relative newlines (global and local) and the separator: kept by every comparison method, never counted."""
        span = image.layout
        return torch.tensor(sorted(span.newline_positions() + [span.separator])) - span.start

    def token_grids(self, image: ImageRecord) -> list[tuple[torch.Tensor, int, int]]:
        """The global g x g view and the stitched (g n_h) x (g n_w) local view, newline columns left out."""
        span = image.layout
        g, rows, cols = span.g, span.g * span.n_h, span.g * span.n_w
        glob = torch.tensor([span.global_index(i, j) for i in range(g) for j in range(g)]) - span.start
        local = torch.tensor([span.local_index(r, c) for r in range(rows) for c in range(cols)]) - span.start
        return [(glob, g, g), (local, rows, cols)]

    def picture_cells(self, image: ImageRecord, view: str) -> torch.Tensor | None:
        """Global-view cells i*(g+1)+j that overlap the letterboxed picture (all real cells for a sliver)."""
        if view != "global":
            return None
        span, vis = image.layout, self.model.settings
        cell = vis.vision.patch_size * vis.projector.downsample_ratio
        valid = valid_global_cells(span.image_size, span.g, vis.vision.image_size, cell)
        if valid.numel() == 0:  # a degenerate sliver of an image: score every real cell
            valid = valid_global_cells(None, span.g, vis.vision.image_size, cell)
        return valid
