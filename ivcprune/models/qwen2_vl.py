"""Qwen2-VL and Qwen2.5-VL adapter (M-RoPE): image spans from the image-pad id split by image_grid_thw."""

from __future__ import annotations

import torch

from ivcprune.core.selection import ImageRecord
from ivcprune.models.base import FamilyAdapter, RequestInputs, register_adapter, token_runs


def mrope_section(head_dim: int) -> list[int]:
    """(t, h, w) split of the head_dim/2 rotary frequencies in the released 1 : 1.5 : 1.5 proportion
    ([16, 24, 24] at head_dim 128); used to build configs of random models at other widths."""
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]


@register_adapter("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration",
                  "Qwen2_5_VLModel", "Qwen2VLModel")
class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL share one structure; ``family`` tells them apart ("qwen2_vl" / "qwen2_5_vl")."""

    positional_axes = 3

    @property
    def family(self) -> str:
        return "qwen2_5_vl" if "Qwen2_5" in type(self.model).__name__ else "qwen2_vl"

    @property
    def _vl_model(self):
        return self.model.model if hasattr(self.model, "lm_head") else self.model

    @property
    def text_model(self):
        return self._vl_model.language_model

    @property
    def config(self):
        return self.model.config

    def image_structure(self, kwargs: dict) -> object:
        """Per image (token count, merged grid or None), in prompt order over the batch.

        A plain forward gets ``image_grid_thw``; ``generate()`` in transformers 5.23 encodes the images first and
        passes ``mm_encoder_outputs`` instead, whose per-image features give the counts (the grid is then read
        back from the M-RoPE positions, see ``complete_images``).
        """
        merge = self.config.vision_config.spatial_merge_size
        grids = kwargs.get("image_grid_thw")
        if grids is not None:
            return [(t * h * w // (merge * merge), (t, h // merge, w // merge)) for t, h, w in grids.tolist()]
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image")
        features = getattr(encoded, "pooler_output", None)
        if features is not None and isinstance(features, (tuple, list)):
            return [(int(f.shape[0]), None) for f in features]
        return None

    def image_spans(self, request: RequestInputs) -> list[list[ImageRecord]]:
        image_id = self.config.image_token_id
        per_image = request.structure or []
        cursor = 0
        spans: list[list[ImageRecord]] = []
        for b in range(request.input_ids.shape[0]):
            is_image = (request.input_ids[b] == image_id) & request.valid[b]
            records = []
            for start, length in token_runs(is_image):
                # adjacent images can merge into one run: split it by the per-image token counts
                while length > 0:
                    n, grid = per_image[cursor] if cursor < len(per_image) else (length, None)
                    if n > length:
                        raise ValueError(
                            f"sample {b}: image {cursor} needs {n} image tokens but only {length} are in the prompt; "
                            "the image inputs do not match input_ids"
                        )
                    records.append(ImageRecord(start=start, length=n, grid=grid))
                    cursor += 1
                    start, length = start + n, length - n
            spans.append(records)
        return spans

    def complete_images(self, images: list[list[ImageRecord]], positions: torch.Tensor) -> None:
        """Fill unknown merged grids (t, h, w) from the M-RoPE ids: rows and columns are the h/w id ranges."""
        for b, records in enumerate(images):
            for im in records:
                if im.grid is None and im.length:
                    pos = positions[:, b, im.start:im.end]
                    h = int(pos[1].max() - pos[1].min()) + 1
                    w = int(pos[2].max() - pos[2].min()) + 1
                    im.grid = (im.length // (h * w), h, w)

    def positions(self, position_ids, batch, length, device):
        # generate() passes 4 rows (a text row for packed-mask detection, then t/h/w); the rotary uses t/h/w
        if position_ids is not None and position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        return super().positions(position_ids, batch, length, device)

    @property
    def _mrope_section(self) -> list[int]:
        """(t, h, w) frequency counts as the model's rotary module applies them."""
        return list(self.text_model.rotary_emb.mrope_section)

    def rotary_axes(self) -> torch.Tensor:
        """Contiguous sections: the first mrope_section[0] frequencies turn with t, the next [1] with h, the rest
        with w (Qwen2/2.5-VL's ``recomposition_frequencies``; [16, 24, 24] at head_dim 128)."""
        t, h, w = self._mrope_section
        return torch.cat([torch.full((n,), axis, dtype=torch.long) for axis, n in enumerate((t, h, w))])

    def decode_position_ids(self, next_positions: torch.Tensor) -> torch.Tensor:
        # M-RoPE: text tokens carry the same id on t/h/w; a 3-row tensor leaves the packed-mask text row unset
        return next_positions[None].expand(3, -1, -1)
