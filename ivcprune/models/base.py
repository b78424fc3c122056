"""What the runtime and the methods need to know about a model family, behind one small interface.

An adapter describes a model and nothing else (docs/ARCHITECTURE.md §3): its decoder layers, where the image tokens
are and how each image is built (grids, tiles, thumbnail, global/local views, structural tokens), the positions and
rotary frequencies, where the values come from and the cache layout. What to keep is decided by the methods
(``ivcprune.methods``), which read this structure; no per-method setting lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ivcprune.core.selection import ImageRecord


class TokenGroup(NamedTuple):
    """A part of an image with its own 2-D layout (a tile, the thumbnail, a view, a row): span-relative indices.

    ``role`` names what the part is ("tile", "thumbnail", "global", "local_row"), so a method can treat parts
    differently (IVC-Prune's DeepSeek-VL2 rows use another IVC fraction than the global view).
    """

    role: str
    indices: torch.Tensor


@dataclass
class RequestInputs:
    """What the top-level forward reveals at the start of a request."""

    input_ids: torch.Tensor  # (B, S)
    valid: torch.Tensor  # (B, S) bool, False on padding
    structure: object = None  # family-specific image structure (e.g. image_grid_thw)


class FamilyAdapter:
    """Base adapter. Subclasses fill the family-specific hook points."""

    family: str = "base"  # the project-wide family name (docs/ARCHITECTURE.md §2), e.g. "llava"
    positional_axes = 1  # A: 3 for M-RoPE, else 1

    def __init__(self, model: nn.Module):
        self.model = model

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def text_model(self) -> nn.Module:
        """The decoder stack that owns .layers and the rotary module.

        Default: ``language_model`` of the VL model, the layout of transformers' native VL classes (the
        ``...ForConditionalGeneration`` wrapper holds it under ``.model``); override for other layouts.
        """
        vl = self.model.model if hasattr(self.model, "lm_head") else self.model
        return vl.language_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.text_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def text_config(self):
        return self.text_model.config

    @property
    def attn_implementation(self) -> str:
        return getattr(self.text_config, "_attn_implementation", None) or "eager"

    def value_module(self, layer_idx: int) -> nn.Module:
        return self.layers[layer_idx].self_attn.v_proj

    def value_heads(self, output: torch.Tensor) -> torch.Tensor:
        """(B, S, H_kv * D) value projection output -> (B, S, H_kv, D)."""
        heads = self.text_config.num_key_value_heads
        return output.reshape(output.shape[0], output.shape[1], heads, -1)

    def inv_freq(self) -> torch.Tensor:
        rotary = self.text_model.rotary_emb
        freq = getattr(rotary, "original_inv_freq", None)
        return (freq if freq is not None else rotary.inv_freq).detach().float().cpu()

    def rotary_axes(self) -> torch.Tensor | None:
        """Per rotary frequency j, the index of the position axis that rotates it inside attention (M-RoPE:
        0 = t, 1 = h, 2 = w); None for 1-D RoPE, where the single axis rotates every frequency."""
        return None

    def residual_input_layers(self) -> tuple[int, ...]:
        """Decoder layers after which the text model adds per-position inputs of its own to the hidden states,
        outside the layers' arguments (Qwen3-VL's DeepStack visual features). Default: none."""
        return ()

    def pop_residual_inputs(self, kwargs: dict) -> tuple[dict, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Take those inputs out of the text model's call: (kwargs without them, {layer: (mask, features)}) where
        ``mask`` (B, S) bool marks the positions and ``features`` (mask.sum(), D) holds their rows in row-major
        order. The runtime then adds them itself after each such layer, at the kept positions from layer K on."""
        return kwargs, {}

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one prompt token over all layers when no live cache is at hand (standard layout).

        Families whose cache is not keys + values per KV head (e.g. MLA latents) override this.
        """
        from ivcprune.runtime.cache import analytic_bytes_per_token

        return analytic_bytes_per_token(self.text_config, self.text_model.dtype)

    # --- per request -------------------------------------------------------------------------------------------
    def request_inputs(self, args: tuple, kwargs: dict) -> RequestInputs | None:
        """Read input ids, padding and image structure from the top-level forward call (None: cannot prune)."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return None
        mask = kwargs.get("attention_mask")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None or mask.ndim != 2 else mask.bool()
        return RequestInputs(input_ids=input_ids, valid=valid, structure=self.image_structure(kwargs))

    def image_structure(self, kwargs: dict) -> object:
        return None

    def image_spans(self, request: RequestInputs) -> list[list[ImageRecord]]:
        """Per sample, the image spans (start, length, grid) in order."""
        raise NotImplementedError

    def positions(self, position_ids: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
        """The position ids the decoder layers use, as (A, B, S) integers."""
        if position_ids is None:
            return torch.arange(length, device=device).view(1, 1, -1).expand(self.positional_axes, batch, -1)
        if position_ids.ndim == 2:
            return position_ids[None].expand(self.positional_axes, -1, -1)
        return position_ids

    def decode_position_ids(self, next_positions: torch.Tensor) -> torch.Tensor:
        """Position ids to inject at a decode step from (B, q) next positions (original numbering)."""
        return next_positions

    def complete_images(self, images: list[list[ImageRecord]], positions: torch.Tensor) -> None:
        """Fill what the request inputs did not reveal (e.g. a grid) once the position ids are known."""

    def image_groups(self, image: ImageRecord) -> list[TokenGroup] | None:
        """The parts of one image that each have their own 2-D layout (tiles, views, rows); None = one span."""
        return None

    def image_views(self, image: ImageRecord) -> dict[str, torch.Tensor]:
        """Named span-relative views of one image: always "span"; tiled families add "thumbnail", two-view
        families "global", "local" and "separator"."""
        return {"span": torch.arange(image.length)}

    def picture_cells(self, image: ImageRecord, view: str) -> torch.Tensor | None:
        """View-relative cells of ``view`` that show the picture (not letterbox padding, not newlines); None = all."""
        return None

    def structural_tokens(self, image: ImageRecord) -> torch.Tensor:
        """Span-relative tokens every comparison method keeps and no budget counts (DeepSeek newlines, separator).

        Default: none, so the budget counts the whole span.
        """
        return torch.empty(0, dtype=torch.long)

    def token_grids(self, image: ImageRecord) -> list[tuple[torch.Tensor, int, int]] | None:
        """The spatial grids of one image for the uniform-grid method: (span-relative indices in raster order,
        rows, cols) each, covering the countable tokens. Default None: the grid method derives its grids from
        ``image_groups`` or the recorded grid, as it always did.
        """
        return None


def token_runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True as (start, length): the image spans of docs/ALGORITHM.md §2 F1 before any per-image
    split."""
    idx = torch.nonzero(flags, as_tuple=False).flatten().tolist()
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


_ADAPTERS: dict[str, type[FamilyAdapter]] = {}


def register_adapter(*class_names: str):
    """Class decorator: map transformers model class names to an adapter."""

    def wrap(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
        for name in class_names:
            _ADAPTERS[name] = cls
        return cls

    return wrap


def get_adapter(model: nn.Module) -> FamilyAdapter:
    """The adapter for a model instance (looked up by class name along its MRO)."""
    import ivcprune.models  # noqa: F401  (registers the built-in adapters)

    for cls in type(model).__mro__:
        if cls.__name__ in _ADAPTERS:
            return _ADAPTERS[cls.__name__](model)
    supported = ", ".join(sorted(_ADAPTERS))
    raise NotImplementedError(
        f"ivcprune has no adapter for {type(model).__name__}; supported model classes: {supported}"
    )
