"""DeepSeek-VL2 processor: best tiling, letter-boxed global/local views, ``<image>`` expansion, chat format.

Reproduces the official ``DeepseekVLV2Processor`` inference path (docs/DEEPSEEK_VL2.md §5): each prompt
piece between ``<image>`` placeholders is encoded separately without special tokens, each image
becomes N(tw, th) ``<image>`` ids, one BOS leads, no EOS trails, and batches are left-padded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature

from .layout import num_image_tokens

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image>"
GROUNDING_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")
USER, ASSISTANT = ROLE_TOKENS
# Official candidate list, in file order (order breaks full ties in the tiling choice).
DEFAULT_CANDIDATES = [
    (384, 384), (384, 768), (768, 384), (384, 1152), (1152, 384), (384, 1536), (1536, 384), (768, 768),
    (384, 1920), (1920, 384), (384, 2304), (2304, 384), (768, 1152), (1152, 768), (384, 2688), (2688, 384),
    (384, 3072), (3072, 384), (768, 1536), (1536, 768), (384, 3456), (3456, 384), (1152, 1152),
]


def select_best_resolution(size: tuple[int, int], candidates: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """Candidate keeping the most original pixels, then the least waste; earlier wins full ties."""
    w0, h0 = size
    best, best_eff, best_waste = None, -1, math.inf
    for cw, ch in candidates:
        s = min(cw / w0, ch / h0)
        eff = min(int(w0 * s) * int(h0 * s), w0 * h0)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    return best


def user_turn_text(content: str) -> str:
    """``deepseek`` template, empty system prompt: one user turn followed by the open assistant turn."""
    return f"{USER}: {content.strip()}\n\n{ASSISTANT}:"


def grounding_prompt(expression: str) -> str:
    """docs/HARNESS.md §5 referring-expression prompt (the image goes first, then this text)."""
    return f"{IMAGE_TOKEN}\nLocate <|ref|>{expression}<|/ref|> in the given image."


def _role(message: dict) -> str:
    role = message["role"]
    if role in (USER, "user"):
        return USER
    if role in (ASSISTANT, "assistant"):
        return ASSISTANT
    raise ValueError(f"unknown role {role!r} (use <|User|> / <|Assistant|>)")


def _as_rgb(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        with Image.open(image) as fh:
            return fh.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


class DeepseekVL2Processor:
    """Turns conversations + PIL images into the official model inputs (names kept)."""

    def __init__(self, tokenizer, candidate_resolutions=None, patch_size: int = 14, downsample_ratio: int = 2,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), image_token: str = IMAGE_TOKEN,
                 pad_token: str = PAD_TOKEN, sft_format: str = "deepseek"):
        if sft_format != "deepseek":
            raise ValueError(f"sft_format {sft_format!r} unsupported (DeepSeek-VL2 uses 'deepseek')")
        self.tokenizer = tokenizer
        self.candidates = [tuple(int(v) for v in c) for c in (candidate_resolutions or DEFAULT_CANDIDATES)]
        self.image_size = self.candidates[0][0]
        self.patch_size, self.downsample_ratio = patch_size, downsample_ratio
        self.tokens_per_side = math.ceil((self.image_size // patch_size) / downsample_ratio)
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.pad_color = tuple(int(m * 255) for m in image_mean)
        self.image_token = image_token
        self._ensure_special_tokens(pad_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.bos_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token or BOS_TOKEN)
        self.eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token or EOS_TOKEN)
        self.pad_id = tokenizer.pad_token_id

    def _ensure_special_tokens(self, pad_token: str) -> None:
        """Add pad / <image> / grounding / role tokens when absent, as the official processor does."""
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": pad_token})
        vocab = tok.get_vocab()
        missing = [t for t in (self.image_token, *GROUNDING_TOKENS, *ROLE_TOKENS) if t not in vocab]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None) -> "DeepseekVL2Processor":
        """Tokenizer through ``PreTrainedTokenizerFast`` (exact byte-level ids in 5.23), settings from processor_config.json."""
        from transformers import PreTrainedTokenizerFast

        from .loading import resolve_folder

        folder = resolve_folder(name_or_path, revision)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        cfg_path = folder / "processor_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        return cls(
            tokenizer,
            candidate_resolutions=cfg.get("candidate_resolutions"),
            patch_size=cfg.get("patch_size", 14),
            downsample_ratio=cfg.get("downsample_ratio", 2),
            image_mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
            image_token=cfg.get("image_token", IMAGE_TOKEN),
            pad_token=cfg.get("pad_token", PAD_TOKEN),
            sft_format=cfg.get("sft_format", "deepseek"),
        )

    # ---- images ----------------------------------------------------------------------------------
    def tiling(self, size: tuple[int, int], cropping: bool = True) -> tuple[int, int]:
        """(tw, th) local tiles for an image of ``size`` = (width, height); 1x1 without cropping."""
        if not cropping:
            return 1, 1
        cw, ch = select_best_resolution(size, self.candidates)
        return cw // self.image_size, ch // self.image_size

    def num_image_tokens(self, tw: int, th: int) -> int:
        return num_image_tokens(tw, th, self.tokens_per_side)

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - self.image_mean) / self.image_std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def process_image(self, image, cropping: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> (1 + tw*th, 3, S, S) float32 tiles [global, local row-major], and (tw, th)."""
        image = _as_rgb(image)
        s = self.image_size
        tw, th = self.tiling(image.size, cropping)
        pad = dict(method=Image.Resampling.BICUBIC, color=self.pad_color)
        tiles = [self._normalise(ImageOps.pad(image, (s, s), **pad))]
        local = ImageOps.pad(image, (tw * s, th * s), **pad)
        for y in range(th):
            for x in range(tw):
                tiles.append(self._normalise(local.crop((x * s, y * s, (x + 1) * s, (y + 1) * s))))
        return torch.stack(tiles, 0), (tw, th)

    # ---- text ------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def format_conversation(self, conversation: list[dict]) -> str:
        """Display string of the prompt (official ``sft_format``)."""
        out = ""
        for message in conversation:
            if _role(message) == USER:
                out += user_turn_text(message["content"])
            elif message["content"].strip():
                out += f" {message['content'].strip()}{EOS_TOKEN}"
        return out

    def encode_conversation(self, conversation: list[dict], images: list | None = None) -> dict[str, Any]:
        """One sample: ids, image mask, tiles, crops and original sizes, before batching."""
        if images is None:
            images = [img for m in conversation for img in m.get("images", []) or []]
        images = [_as_rgb(im) for im in images]
        placeholders = sum(m["content"].count(self.image_token) for m in conversation if _role(m) == USER)
        if placeholders != len(images):
            raise ValueError(f"{placeholders} {self.image_token} placeholders but {len(images)} images")
        cropping = len(images) <= 2
        ids, seq_mask, tiles, crops, sizes = [self.bos_id], [False], [], [], []
        img_iter = iter(images)
        for message in conversation:
            if _role(message) == ASSISTANT:
                answer = message["content"].strip()
                if self.image_token in answer:
                    raise ValueError("assistant turns cannot hold images")
                if answer:
                    piece = self.encode_text(answer) + [self.eos_id]
                    ids += piece
                    seq_mask += [False] * len(piece)
                continue
            pieces = user_turn_text(message["content"]).split(self.image_token)
            for k, piece in enumerate(pieces):
                text_ids = self.encode_text(piece)
                ids += text_ids
                seq_mask += [False] * len(text_ids)
                if k == len(pieces) - 1:
                    break
                image = next(img_iter)
                view, (tw, th) = self.process_image(image, cropping)
                n = self.num_image_tokens(tw, th)
                ids += [self.image_token_id] * n
                seq_mask += [True] * n
                tiles.append(view)
                crops.append((tw, th))
                sizes.append((image.height, image.width))  # image_sizes rows are (height, width), as InternVL's
        return {"input_ids": ids, "images_seq_mask": seq_mask, "tiles": tiles, "crops": crops, "sizes": sizes}

    # ---- batching --------------------------------------------------------------------------------
    def batch(self, samples: list[dict[str, Any]]) -> BatchFeature:
        """Left-pad ids/masks; zero-pad tiles and crops (a sample without images gets one zero tile)."""
        bsz = len(samples)
        length = max(len(s["input_ids"]) for s in samples)
        n_tiles = max(1, max(sum(t.shape[0] for t in s["tiles"]) for s in samples))
        n_images = max(1, max(len(s["crops"]) for s in samples))
        s_px = self.image_size
        input_ids = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((bsz, length), dtype=torch.bool)
        images_seq_mask = torch.zeros((bsz, length), dtype=torch.bool)
        images = torch.zeros((bsz, n_tiles, 3, s_px, s_px), dtype=torch.float32)
        crops = torch.zeros((bsz, n_images, 2), dtype=torch.long)
        sizes = torch.zeros((bsz, n_images, 2), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[b, length - n :] = torch.tensor(s["input_ids"], dtype=torch.long)
            attention_mask[b, length - n :] = True
            images_seq_mask[b, length - n :] = torch.tensor(s["images_seq_mask"], dtype=torch.bool)
            if s["tiles"]:
                stacked = torch.cat(s["tiles"], 0)
                images[b, : stacked.shape[0]] = stacked
                crops[b, : len(s["crops"])] = torch.tensor(s["crops"], dtype=torch.long)
                sizes[b, : len(s["sizes"])] = torch.tensor(s["sizes"], dtype=torch.long)
        return BatchFeature({
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "images_seq_mask": images_seq_mask,
            "images": images,
            "images_spatial_crop": crops,
            "image_sizes": sizes,
        })

    def __call__(self, conversations=None, images=None, prompts: list[str] | str | None = None) -> BatchFeature:
        """Batch inputs from one conversation or a list of them (or single-turn ``prompts``).

        ``images`` is a list of images for one conversation, or a list of such lists for a batch; when
        omitted, each message's ``"images"`` entry is used.
        """
        single = isinstance(prompts, str)
        if prompts is not None:
            prompts = [prompts] if single else list(prompts)
            conversations = [[{"role": USER, "content": p}, {"role": ASSISTANT, "content": ""}] for p in prompts]
        if conversations is None:
            raise ValueError("give conversations or prompts")
        if conversations and isinstance(conversations[0], dict):
            conversations, single = [conversations], True
        if single and images is not None:
            images = [images]
        if images is None:
            images = [None] * len(conversations)
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        return self.batch([self.encode_conversation(c, im) for c, im in zip(conversations, images)])

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Keep special tokens by default: grounding answers live inside <|ref|>/<|det|> tags."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
