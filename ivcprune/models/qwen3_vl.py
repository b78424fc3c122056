"""Qwen3-VL adapter (dense and MoE): the Qwen2.5-VL structure plus interleaved M-RoPE and DeepStack.

What differs from ``QwenVLAdapter`` (checked against transformers 5.23's ``qwen3_vl`` / ``qwen3_vl_moe``):

* **Interleaved M-RoPE.** The rotary module fills frequency j from the h axis when j % 3 == 1 and j < 3 * s_h,
  from the w axis when j % 3 == 2 and j < 3 * s_w, and from t otherwise (``mrope_section`` = (s_t, s_h, s_w),
  [24, 20, 20] at head_dim 128), instead of three contiguous blocks. ``rotary_axes`` says so per frequency.
* **DeepStack.** The text model adds visual features of several vision-tower layers to the image-token hidden
  states after its first len(``deepstack_visual_indexes``) decoder layers (``visual_pos_masks``,
  ``deepstack_visual_embeds``). ``residual_input_layers`` / ``pop_residual_inputs`` describe them so that the
  runtime can add them at the kept positions when K falls inside those layers.
* Patch 16 with a 2x2 merge (32 px per merged token) and learned position embeddings in the vision tower: nothing
  the pruner reads. Image spans, merged grids and position ids follow the Qwen2.5-VL rules unchanged.
* Video (timestamps, several frames per prompt) is out of scope: a prompt with video raises under ``prune()``.
"""

from __future__ import annotations

import torch

from ivcprune.models.base import RequestInputs, register_adapter
from ivcprune.models.qwen2_vl import QwenVLAdapter


def interleaved_section(n_freq: int) -> list[int]:
    """(t, h, w) frequency counts in the released 24 : 20 : 20 proportion (h and w take round(5/16 n) each), to
    build configs of random models at other widths ([6, 5, 5] at 16 frequencies)."""
    hw = round(n_freq * 5 / 16)
    return [n_freq - 2 * hw, hw, hw]


def interleaved_axes(section: list[int] | tuple[int, int, int], n_freq: int) -> torch.Tensor:
    """Axis per frequency under Qwen3-VL's interleaved M-RoPE: h on j = 1, 4, ... < 3 s_h, w on j = 2, 5, ...
    < 3 s_w, t everywhere else (so t also takes the tail j >= 3 s_h when s_t > s_h)."""
    _, s_h, s_w = section
    axes = torch.zeros(n_freq, dtype=torch.long)
    axes[1:3 * s_h:3] = 1
    axes[2:3 * s_w:3] = 2
    return axes


@register_adapter("Qwen3VLForConditionalGeneration", "Qwen3VLModel",
                  "Qwen3VLMoeForConditionalGeneration", "Qwen3VLMoeModel")
class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL dense ("qwen3_vl") and MoE ("qwen3_vl_moe"); same layout, MoE only changes the MLPs."""

    @property
    def family(self) -> str:
        return "qwen3_vl_moe" if "Moe" in type(self.model).__name__ else "qwen3_vl"

    def rotary_axes(self) -> torch.Tensor:
        return interleaved_axes(self._mrope_section, self.inv_freq().numel())

    def request_inputs(self, args: tuple, kwargs: dict) -> RequestInputs | None:
        encoded = kwargs.get("mm_encoder_outputs") or {}
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        has_video_tokens = input_ids is not None and bool((input_ids == self.config.video_token_id).any())
        if (kwargs.get("pixel_values_videos") is not None or kwargs.get("video_grid_thw") is not None
                or encoded.get("video") is not None or has_video_tokens):
            raise NotImplementedError(
                "ivcprune: video inputs are not supported for Qwen3-VL under prune() (timestamps and multi-frame "
                "positions are out of scope); prune still images only, or run the video prompt outside the block"
            )
        return super().request_inputs(args, kwargs)

    # --- DeepStack -------------------------------------------------------------------------------------------
    def residual_input_layers(self) -> tuple[int, ...]:
        n = len(self.config.vision_config.deepstack_visual_indexes)
        return tuple(range(min(n, self.num_layers)))

    def pop_residual_inputs(self, kwargs: dict) -> tuple[dict, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        masks, features = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
        if masks is None or features is None:
            return kwargs, {}
        rest = {**kwargs, "visual_pos_masks": None, "deepstack_visual_embeds": None}
        return rest, {layer: (masks, feats) for layer, feats in enumerate(features) if layer < self.num_layers}
