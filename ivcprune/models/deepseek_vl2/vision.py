"""SigLIP-SO400M/14 feature tower in plain torch (SDPA), under timm's state-dict names.

DeepSeek-VL2 runs a timm ViT with xformers; neither is allowed here, and only the patch features
after the final LayerNorm are used. Module names mirror the checkpoint keys (``vision.blocks.{i}.attn.qkv``
...) so loading needs no renaming. The attention-pool head exists only so that strict loading finds
its 13 tensors; it is never called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import VisionSettings

LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """14x14 stride-14 conv; a 384 input gives 27x27 patches (the last 6 pixel rows/cols are unseen)."""

    def __init__(self, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Unmasked multi-head self-attention; qkv rows are [q | k | v], each head-major."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.head_dim**-0.5)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2. The ViT uses the tanh approximation (the official code forces it)."""

    def __init__(self, width: int, hidden: int, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionPoolHead(nn.Module):
    """Placeholder for timm's ``attn_pool`` (MAP head): holds its weights, has no forward on purpose."""

    def __init__(self, width: int, mlp_hidden: int):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp_hidden)


class SiglipVisionTower(nn.Module):
    """(tiles, 3, 384, 384) pixels -> (tiles, 729, width) features after the final LayerNorm."""

    def __init__(self, cfg: VisionSettings):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.width, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.attn_pool = AttentionPoolHead(cfg.width, cfg.mlp_hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels.to(self.pos_embed.dtype)) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
