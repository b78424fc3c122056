"""The embedded sample: a tiny synthetic RefCOCO split the project generates itself.

Scenes are drawn with PIL (a plain background and 2-4 coloured shapes), the referring expressions
are written as an MDETR-style `finetune_refcoco_testA.json` plus an images folder, and our own
converter turns that into `RefCOCO_testA.tsv` and `RefCOCO_testA_for_qwen25vl.tsv`, so the demo
exercises exactly the path real data takes.  Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 30),
           "purple": (140, 60, 180), "orange": (240, 140, 30)}
BACKGROUNDS = [(245, 245, 240), (225, 232, 240), (236, 226, 214), (212, 224, 212)]
KINDS = ("circle", "square", "triangle")
# a few sizes that are not multiples of 28, incl. halves that round down (70 -> 56 would be too small here)
SIZES = [160, 182, 200, 214, 238, 250, 266, 280, 294, 301, 320]
SOURCE_DIR = "demo_source"
SPLIT = "finetune_refcoco_testA"


def _place(rng: random.Random, W: int, H: int, taken: list) -> list[float] | None:
    """A square-ish box [x, y, w, h] that does not overlap earlier ones (a few tries)."""
    for _ in range(40):
        side = rng.randint(max(24, min(W, H) // 6), max(30, min(W, H) // 3))
        w = side + rng.randint(-4, 4)
        h = side + rng.randint(-4, 4)
        x = rng.randint(2, W - w - 2) + rng.choice([0, 0.25, 0.5])
        y = rng.randint(2, H - h - 2) + rng.choice([0, 0.5, 0.75])
        box = [x, y, w, h]
        if all(x + w < bx or bx + bw < x or y + h < by or by + bh < y for bx, by, bw, bh in taken):
            return box
    return None


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: list[float], fill) -> None:
    x, y, w, h = box
    if kind == "circle":
        draw.ellipse([x, y, x + w, y + h], fill=fill)
    elif kind == "square":
        draw.rectangle([x, y, x + w, y + h], fill=fill)
    else:
        draw.polygon([(x + w / 2, y), (x + w, y + h), (x, y + h)], fill=fill)


def _expression(rng: random.Random, target: dict, shapes: list) -> str:
    """A referring expression that is true and unambiguous for the scene."""
    name = f"{target['colour']} {target['kind']}"
    cx = target["box"][0] + target["box"][2] / 2
    others = [s for s in shapes if s is not target]
    leftmost = all(cx < s["box"][0] + s["box"][2] / 2 for s in others)
    rightmost = all(cx > s["box"][0] + s["box"][2] / 2 for s in others)
    where = " on the left" if leftmost and rng.random() < 0.5 else " on the right" if rightmost and rng.random() < 0.5 else ""
    return rng.choice(["the ", "", "the "]) + name + where


def _scene(rng: random.Random, W: int, H: int) -> tuple[Image.Image, list]:
    img = Image.new("RGB", (W, H), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    combos = rng.sample([(c, k) for c in COLOURS for k in KINDS], rng.randint(2, 4))
    shapes, taken = [], []
    for colour, kind in combos:
        box = _place(rng, W, H, taken)
        if box is None:
            continue
        taken.append(box)
        _draw(draw, kind, box, COLOURS[colour])
        shapes.append({"colour": colour, "kind": kind, "box": box})
    return img, shapes


def write_mdetr_source(src: Path, n: int = 24, seed: int = 0) -> Path:
    """Images + `finetune_refcoco_testA.json` (one images[] entry per expression, two per photo)."""
    rng = random.Random(seed)
    img_dir = src / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    photo = 0
    while len(images) < n:
        photo += 1
        W, H = rng.choice(SIZES), rng.choice(SIZES)
        img, shapes = _scene(rng, W, H)
        file_name = f"COCO_train2014_{photo:012d}.jpg"
        img.save(img_dir / file_name, format="JPEG", quality=90)
        for target in rng.sample(shapes, min(2, len(shapes), n - len(images))):
            entry_id = len(images) + 1
            images.append({"id": entry_id, "file_name": file_name, "height": H, "width": W,
                           "caption": _expression(rng, target, shapes), "original_id": photo})
            annotations.append({"id": entry_id, "image_id": entry_id, "bbox": target["box"],
                                "area": target["box"][2] * target["box"][3], "iscrowd": 0, "category_id": 1})
    ann_file = src / f"{SPLIT}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "shape"}]}), encoding="utf-8")
    return ann_file


def convert_both(ann_file: Path, images_folder: Path, root: Path) -> dict[str, Path]:
    """Convert one MDETR annotation file with our converter, standard and ``--qwen25``: {TSV stem: path}."""
    from ..tools.convert import convert

    tsv = {}
    for qwen25 in (False, True):
        # generated data: a rerun with fewer rows replaces the previous sample (force)
        rep = convert([ann_file], images_folder, root, qwen25=qwen25, quiet=True, force=True)[0]
        if rep.error or rep.skipped:
            raise RuntimeError(f"conversion of {ann_file} failed: {rep.error or rep.skipped[:3]}")
        tsv[rep.output.stem] = rep.output
    return tsv


def build_demo_lmudata(root: Path, n: int = 24, seed: int = 0) -> dict:
    """Write the synthetic split under `root` and convert it in both modes; returns what was made."""
    root = Path(root)
    src = root / SOURCE_DIR
    ann_file = write_mdetr_source(src, n=n, seed=seed)
    tsv = convert_both(ann_file, src / "train2014", root)
    return {"root": root, "datasets": list(tsv), "tsv": tsv, "annotations": ann_file,
            "images_folder": src / "train2014", "n_rows": n, "n_photos": len(list((src / "train2014").iterdir()))}
