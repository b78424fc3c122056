"""IVC-Prune adapter for ``DeepseekVL2ForCausalLM`` (GLOBAL-LOCAL policy, ALGORITHM §2, §4.1-§4.2).

An image is [global 14x15 incl. newlines][separator][local (14 n_h) x (14 n_w + 1) incl. newlines] (global
first in every release). IVC runs on the 210 global positions and on each local row; the foreground is scored
on the global view only, with the 210 global positions as softmax keys and the letterbox-free global cells as
seed candidates, and mapped onto the local tiles. Newlines and the separator are always kept.

Values: MLA (small/base) -> the value slice of layer K-1's ``kv_b_proj`` output (its input is the normalised
latent of the whole prompt at prefill); MHA (tiny) -> ``v_proj``. Positions are the 1-D prompt positions; the
rotary frequencies are those of the rope part (θ = 1e4, d_r = 64 on MLA checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivcprune.core import policies
from ivcprune.core.foreground import foreground_scores
from ivcprune.core.ranking import count
from ivcprune.core.rope import ivc_scores, ivc_select
from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, FamilySettings, RequestInputs, register_adapter

DEEPSEEK_SETTINGS = FamilySettings(
    family="deepseek_vl2",
    policy="global_local",
    retention=0.5,  # fg budget of the global view: round(0.5 * 210) minus |IVC_g|; no overall budget
    ivc_fraction=0.10,  # global view; local rows use ROW_IVC_FRACTION
    seed_fraction=0.01,
    query_offset=1,
    keys="global",
    # K / N_L = 17/27 (small, tuned by the paper); tiny and base keep that relative depth (untuned)
    default_layers=((27, 17), (12, 8), (30, 19)),
)
ROW_IVC_FRACTION = 0.15  # f_cos = f_sin inside each local row: 2 / 4 / 6 / 9 tokens for n_w = 1 / 2 / 3 / 4


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
    settings = DEEPSEEK_SETTINGS
    row_ivc_fraction = ROW_IVC_FRACTION

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

    def image_groups(self, image: ImageRecord) -> list[torch.Tensor]:
        """Span-relative IVC groups: the 210 global positions, then every local row (used by +IVC baselines)."""
        span = image.layout
        g0, l0 = span.global_start - span.start, span.local_start - span.start
        glob = torch.arange(g0, g0 + span.g * (span.g + 1))
        return [glob] + [row + l0 for row in policies.local_rows(span.g, (span.n_w, span.n_h))]

    def ivc_sets(self, ctx, image: ImageRecord, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Span-relative (cos, sin) IVC sets: ``fraction`` on the global view, ROW_IVC_FRACTION per local row.

        Shared by GLOBAL-LOCAL and the +IVC baselines (``fraction`` = the family's 0.10 unless overridden).
        """
        a, n = image.start, image.length
        c, s = ivc_scores(ctx.positions[:, a:a + n].cpu(), ctx.inv_freq)
        groups = self.image_groups(image)
        g_cos, g_sin = ivc_select(c, s, groups[:1], fraction, fraction)
        r_cos, r_sin = ivc_select(c, s, groups[1:], self.row_ivc_fraction, self.row_ivc_fraction)
        return torch.cat([g_cos, r_cos]).unique(), torch.cat([g_sin, r_sin]).unique()

    def structural_tokens(self, image: ImageRecord) -> torch.Tensor:
        """Span-relative newlines (global and local) and the separator: kept by every baseline, never counted."""
        span = image.layout
        return torch.tensor(sorted(span.newline_positions() + [span.separator])) - span.start

    def token_grids(self, image: ImageRecord) -> list[tuple[torch.Tensor, int, int]]:
        """The global g x g view and the stitched (g n_h) x (g n_w) local view, newline columns left out."""
        span = image.layout
        g, rows, cols = span.g, span.g * span.n_h, span.g * span.n_w
        glob = torch.tensor([span.global_index(i, j) for i in range(g) for j in range(g)]) - span.start
        local = torch.tensor([span.local_index(r, c) for r in range(rows) for c in range(cols)]) - span.start
        return [(glob, g, g), (local, rows, cols)]

    def valid_cells(self, image: ImageRecord) -> torch.Tensor:
        span, vis = image.layout, self.model.settings
        cell = vis.vision.patch_size * vis.projector.downsample_ratio
        valid = valid_global_cells(span.image_size, span.g, vis.vision.image_size, cell)
        if valid.numel() == 0:  # a degenerate sliver of an image: score every real cell
            valid = valid_global_cells(None, span.g, vis.vision.image_size, cell)
        return valid

    # --- policy ------------------------------------------------------------------------------------------------
    def select_global_local(self, ctx, image: ImageRecord, settings: FamilySettings) -> None:
        """GLOBAL-LOCAL: IVC_g u fg_g u seeds u IVC_rows u map(fg_g u seeds) u newlines u separator."""
        span = image.layout
        a, n, g = image.start, image.length, span.g
        queries = ctx.queries(image, settings.query_offset)
        if queries.numel() == 0 or ctx.values is None:
            image.kept = list(range(a, a + n))  # nothing to score against: leave the image unpruned
            return
        g0, l0 = span.global_start - a, span.local_start - a
        ivc_cos, ivc_sin = self.ivc_sets(ctx, image, settings.ivc_fraction)
        ivc = torch.cat([ivc_cos, ivc_sin]).unique()
        n_global = g * (g + 1)
        in_global = (ivc >= g0) & (ivc < g0 + n_global)
        valid = self.valid_cells(image)
        global_cols = torch.arange(span.global_start, span.global_start + n_global)
        n_seed = max(1, count(valid.numel(), settings.seed_fraction))  # correction 4: never 0 seeds
        seeds, fg_scores = foreground_scores(ctx.values, queries, global_cols, global_cols, n_seed,
                                             seed_candidates=valid)
        seeds = seeds.cpu()
        global_sel, local_sel, fg = policies.global_local(
            ivc[in_global] - g0, ivc[~in_global] - l0, seeds, fg_scores.cpu(), valid, g, (span.n_w, span.n_h),
            settings.retention,
        )
        kept = torch.cat([global_sel + span.global_start, local_sel + span.local_start,
                          torch.tensor([span.separator])])
        image.kept = kept.unique().tolist()
        image.ivc_cos = (ivc_cos + a).tolist()
        image.ivc_sin = (ivc_sin + a).tolist()
        image.seeds = sorted((seeds + span.global_start).tolist())
        mapped = policies.global_to_local(fg, g, (span.n_w, span.n_h)) + span.local_start
        image.foreground = sorted((fg + span.global_start).tolist() + mapped.tolist())
