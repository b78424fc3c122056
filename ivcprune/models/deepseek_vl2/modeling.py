"""Top-level DeepSeek-VL2 model: SigLIP tower + 2x2 projector + tile layout + transformers' DeepSeek LM.

Submodule names (``vision``, ``projector``, ``language``, ``image_newline``, ``view_seperator``)
equal the official checkpoint prefixes. ``forward`` is always called with keyword arguments so a
``register_forward_pre_hook(..., with_kwargs=True)`` on this module sees ``images_seq_mask``,
``images_spatial_crop`` and ``image_sizes`` at prefill; ``last_image_layout`` keeps the parsed
per-sample spans of the latest prefill.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .configuration import DeepseekVL2Settings, load_config
from .generation import choose_next_token
from .language import build_language_model
from .layout import ImageSpan, image_spans
from .loading import load_strict, materialise_meta_buffers, read_checkpoint, resolve_folder
from .projector import DownsampleMLPProjector
from .vision import SiglipVisionTower

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def positions_from_mask(attention_mask: torch.Tensor, q_len: int | None = None) -> torch.Tensor:
    """cumsum(mask) - 1 for real tokens, 1 for padding (the official value; masked anyway)."""
    mask = attention_mask.bool()
    pos = mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(~mask, 1)
    return pos if q_len is None else pos[:, -q_len:]


def _as_dtype(value, fallback: str) -> torch.dtype:
    if value is None or value == "auto":
        value = fallback
    if isinstance(value, torch.dtype):
        return value
    return _DTYPES[str(value).replace("torch.", "")]


class DeepseekVL2ForCausalLM(nn.Module):
    """DeepSeek-VL2 (tiny/small/base) over stock transformers 5.23; see docs/DEEPSEEK_VL2.md."""

    def __init__(self, settings: DeepseekVL2Settings):
        super().__init__()
        self.settings = settings
        hidden = settings.text_config.hidden_size
        self.vision = SiglipVisionTower(settings.vision)
        self.projector = DownsampleMLPProjector(settings.projector)
        self.language = build_language_model(settings.lm_kind, settings.text_config)
        self.image_newline = nn.Parameter(torch.randn(hidden) * 0.02)
        self.view_seperator = nn.Parameter(torch.randn(hidden) * 0.02)  # (sic) official key name
        self.last_image_layout: list[list[ImageSpan]] | None = None

    # ---- handles for the pruning runtime -------------------------------------------------------
    @property
    def config(self):
        """The transformers text config (what DynamicCache and the decoder layers read)."""
        return self.settings.text_config

    text_config = config

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language.model.layers

    @property
    def rotary_emb(self) -> nn.Module:
        return self.language.model.rotary_emb

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language.model.embed_tokens

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        torch_dtype=None,
        attn_implementation: str = "eager",
        device: str | torch.device | None = None,
        revision: str | None = None,
        experts_implementation: str | None = None,
        dtype=None,
    ) -> "DeepseekVL2ForCausalLM":
        """Load an official checkpoint folder or hub id; any missing/unexpected key raises."""
        folder = resolve_folder(name_or_path, revision)
        settings = load_config(folder)
        target = _as_dtype(torch_dtype if torch_dtype is not None else dtype, settings.torch_dtype)
        settings.text_config._attn_implementation = attn_implementation
        if experts_implementation is not None:
            settings.text_config._experts_implementation = experts_implementation
        with torch.device("meta"):
            model = cls(settings)
        load_strict(model, read_checkpoint(folder, target, device or "cpu"), settings.text_config.n_routed_experts)
        materialise_meta_buffers(model)
        model.eval()
        return model.to(device) if device is not None else model

    # ---- embeddings ------------------------------------------------------------------------------
    def encode_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) pixels -> (n, h*w, H) projected tile tokens."""
        return self.projector(self.vision(tiles.to(self.dtype)))

    def _image_sequence(self, feats: torch.Tensor, tw: int, th: int) -> torch.Tensor:
        """Projected tiles of one image (global first, then local row-major) -> its token sequence."""
        g, hidden = self.settings.tokens_per_side, feats.shape[-1]
        newline = self.image_newline.to(feats.dtype)
        glob = feats[0].view(g, g, hidden)
        glob = torch.cat([glob, newline.expand(g, 1, hidden)], dim=1).reshape(-1, hidden)
        local = feats[1 : 1 + tw * th].view(th, tw, g, g, hidden).permute(0, 2, 1, 3, 4)
        local = local.reshape(th * g, tw * g, hidden)
        local = torch.cat([local, newline.expand(th * g, 1, hidden)], dim=1).reshape(-1, hidden)
        sep = self.view_seperator.to(feats.dtype)[None]
        parts = [glob, sep, local] if self.settings.global_view_pos == "head" else [local, sep, glob]
        return torch.cat(parts, dim=0)

    def prepare_inputs_embeds(self, input_ids, images=None, images_seq_mask=None, images_spatial_crop=None,
                              image_sizes=None) -> torch.Tensor:
        """Token embeddings with every image's layout scattered into its ``images_seq_mask`` slots."""
        embeds = self.get_input_embeddings()(input_ids)
        if images is None or images_spatial_crop is None or int(images_spatial_crop.sum()) == 0:
            return embeds
        tiles, crops = [], []
        for b in range(input_ids.shape[0]):
            offset = 0
            for tw, th in images_spatial_crop[b].tolist():
                if tw == 0 or th == 0:
                    break
                n = 1 + tw * th
                tiles.append(images[b, offset : offset + n])
                crops.append((b, tw, th))
                offset += n
        feats = self.encode_tiles(torch.cat(tiles, 0)).to(embeds.dtype)
        per_row: dict[int, list[torch.Tensor]] = {}
        start = 0
        for b, tw, th in crops:
            n = 1 + tw * th
            per_row.setdefault(b, []).append(self._image_sequence(feats[start : start + n], tw, th))
            start += n
        rows = []
        for b in range(input_ids.shape[0]):
            row = embeds[b]
            if b in per_row:
                seq = torch.cat(per_row[b], 0)
                slots = images_seq_mask[b].bool()
                if int(slots.sum()) != seq.shape[0]:
                    raise ValueError(f"sample {b}: {int(slots.sum())} image slots but {seq.shape[0]} image embeddings")
                row = row.masked_scatter(slots[:, None], seq)
            rows.append(row)
        return torch.stack(rows, 0)

    def image_layout(self, images_seq_mask=None, images_spatial_crop=None, image_sizes=None):
        """Per-sample ``ImageSpan`` lists (empty for text-only rows); None when no image inputs are given."""
        if images_seq_mask is None or images_spatial_crop is None:
            return None
        return image_spans(images_seq_mask, images_spatial_crop, image_sizes, self.settings.tokens_per_side,
                           self.settings.global_view_pos == "head")

    # ---- forward / generate ----------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, images=None, images_seq_mask=None, images_spatial_crop=None,
                image_sizes=None, use_cache=None, logits_to_keep: int = 0, **kwargs):
        """Returns the LM output (``.logits``, ``.past_key_values``); images are used only when given."""
        if past_key_values is None or past_key_values.get_seq_length() == 0:  # a prefill
            self.last_image_layout = self.image_layout(images_seq_mask, images_spatial_crop, image_sizes)
        if inputs_embeds is None:
            inputs_embeds = self.prepare_inputs_embeds(
                input_ids, images, images_seq_mask, images_spatial_crop, image_sizes
            )
        if position_ids is None and attention_mask is not None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1])
        return self.language(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, images=None, images_seq_mask=None,
                 images_spatial_crop=None, image_sizes=None, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 eos_token_id=None, pad_token_id=None, use_cache: bool = True,
                 generator: torch.Generator | None = None, bos_token_id=None, num_beams: int = 1) -> torch.Tensor:
        """Greedy or sampled decoding over a left-padded batch; returns prompt + new tokens (B, T + n).

        Finished rows are filled with ``pad_token_id`` (default: the EOS id). ``use_cache=False`` re-runs
        the whole prompt (images included) every step: slow, but an independent oracle for the cache.
        """
        if num_beams != 1:
            raise NotImplementedError("beam search is not implemented; use greedy or sampling")
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=input_ids.device)
        pad = int(pad_token_id if pad_token_id is not None else eos_ids[0])
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        seq, done = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        cache = DynamicCache(config=self.config) if use_cache else None
        pos = positions_from_mask(mask)
        out = self(input_ids=seq, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   images=images, images_seq_mask=images_seq_mask, images_spatial_crop=images_spatial_crop,
                   image_sizes=image_sizes, use_cache=use_cache, logits_to_keep=1)
        for step in range(max_new_tokens):
            nxt = choose_next_token(out.logits[:, -1].float(), seq, do_sample, temperature, top_k, top_p,
                                    repetition_penalty, generator)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
            done = done | torch.isin(nxt, eos_ids)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            if use_cache:
                pos = pos[:, -1:] + 1
                out = self(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=True, logits_to_keep=1)
            else:
                grown = None
                if images_seq_mask is not None:
                    grown = torch.cat([images_seq_mask.bool(), mask.new_zeros(mask.shape[0], seq.shape[1]
                                                                              - images_seq_mask.shape[1])], 1)
                out = self(input_ids=seq, attention_mask=mask, position_ids=positions_from_mask(mask),
                           images=images, images_seq_mask=grown, images_spatial_crop=images_spatial_crop,
                           image_sizes=image_sizes, use_cache=False, logits_to_keep=1)
        return seq
