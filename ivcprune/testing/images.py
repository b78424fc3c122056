"""Deterministic structured test images (gradient background plus coloured shapes).

Flat or noise-only images make every vision token alike; shapes and gradients give pruning
something to discriminate while staying reproducible from (w, h, seed) alone.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw


def make_image(w: int = 112, h: int = 84, seed: int = 0) -> Image.Image:
    """Return a w x h RGB image: a seeded two-colour gradient with a few rectangles and ellipses."""
    rng = random.Random(seed * 7919 + w * 31 + h)
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    img = Image.new("RGB", (w, h))
    px = img.load()
    span = max(1, w + h - 2)
    for y in range(h):
        for x in range(w):
            t = (x + y) / span
            px[x, y] = tuple(int(a + (b - a) * t) for a, b in zip(c0, c1))
    draw = ImageDraw.Draw(img)
    for _ in range(3 + rng.randrange(3)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1 = min(w - 1, x0 + 4 + rng.randrange(max(1, w // 2)))
        y1 = min(h - 1, y0 + 4 + rng.randrange(max(1, h // 2)))
        colour = tuple(rng.randrange(256) for _ in range(3))
        if x1 <= x0 or y1 <= y0:
            continue
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    return img
