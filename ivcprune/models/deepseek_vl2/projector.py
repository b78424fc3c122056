"""``downsample_mlp_gelu`` projector: 2x2 unfold of the 27x27 patch grid, then an MLP.

The grid is zero-padded to 28x28 (one row at the bottom, one column at the right) and unfolded
channel-major (feature index c*4 + di*2 + dj), which is exactly ``F.pixel_unshuffle``; a
position-major concatenation would silently scramble the first Linear's inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import ProjectorSettings


def unfold_2x2(features: torch.Tensor, ratio: int = 2) -> torch.Tensor:
    """(tiles, g*g, C) -> (tiles, ceil(g/r)^2, C*r*r), zero padding bottom/right, channel-major."""
    tiles, n, c = features.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    x = features.transpose(1, 2).reshape(tiles, c, g, g)
    pad = (-g) % ratio
    if pad:
        x = F.pad(x, (0, pad, 0, pad))
    x = F.pixel_unshuffle(x, ratio)
    return x.flatten(2).transpose(1, 2)


class DownsampleMLPProjector(nn.Module):
    """``layers.0`` Linear(C*4 -> H*r), exact-erf GELU, ..., last Linear(H*r -> H); keys match the checkpoint."""

    def __init__(self, cfg: ProjectorSettings):
        super().__init__()
        self.ratio = cfg.downsample_ratio
        inner = cfg.n_embed * cfg.mlp_ratio
        mods: list[nn.Module] = [nn.Linear(cfg.input_dim * self.ratio * self.ratio, inner)]
        for _ in range(1, cfg.depth - 1):
            mods += [nn.GELU(), nn.Linear(inner, inner)]
        mods += [nn.GELU(), nn.Linear(inner, cfg.n_embed)]
        self.layers = nn.Sequential(*mods)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(unfold_2x2(features, self.ratio))
