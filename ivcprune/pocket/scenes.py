"""Referring scenes for the pocket model: 280x280 pictures with 2-3 coloured shapes, one named by the expression.

Every object sits on the 28-pixel grid of Qwen2.5-VL's merged image tokens (280 / 28 = 10x10 = 100 image
tokens), so a perfect answer has IoU 1.0 and the `_for_qwen25vl` frame equals the picture. Colours are unique
within a scene, so "the <colour> <shape>" always names exactly one object; the others are distractors.

``scene(seed)`` is deterministic; ``write_mdetr_source`` writes an MDETR-style ``finetune_refcoco_<split>.json``
plus JPEGs, and ``build_lmudata`` converts them with the project's own converter into RefCOCO-format TSVs,
exactly the path real RefCOCO data takes.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 280           # picture side in pixels (a multiple of 28: no resize, GT frame == picture)
CELL = 28            # one merged image token
GRID = SIDE // CELL  # 10
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 75, 220), "yellow": (230, 200, 35),
           "purple": (140, 60, 180), "orange": (240, 135, 30)}
KINDS = ("circle", "square", "triangle")
BACKGROUNDS = [(128, 128, 128), (150, 150, 145), (110, 115, 120), (140, 132, 124)]
SPLIT = "finetune_refcoco_testA"
JPEG_QUALITY = 90


def _place(rng: random.Random, taken: list) -> list[int] | None:
    """A cell-aligned box [x, y, w, h] of 2-4 cells per side, one free cell away from every earlier box."""
    for _ in range(60):
        cw, ch = rng.randint(2, 4), rng.randint(2, 4)
        cx, cy = rng.randint(0, GRID - cw), rng.randint(0, GRID - ch)
        if all(cx + cw + 1 <= bx or bx + bw + 1 <= cx or cy + ch + 1 <= by or by + bh + 1 <= cy
               for bx, by, bw, bh in taken):
            taken.append((cx, cy, cw, ch))
            return [cx * CELL, cy * CELL, cw * CELL, ch * CELL]
    return None


def _draw(draw: ImageDraw.ImageDraw, kind: str, box, fill) -> None:
    """The shape fills its box exactly (its tight box is the GT box)."""
    x, y, w, h = box
    if kind == "circle":
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
    elif kind == "square":
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
    else:
        draw.polygon([(x + (w - 1) / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=fill)


def scene(seed: int, n_objects: tuple[int, int] = (2, 3)) -> dict:
    """One scene: ``image`` (PIL, after a JPEG round trip as stored), ``objects`` and the ``target`` index."""
    rng = random.Random(seed)
    n = rng.randint(*n_objects)
    colours = rng.sample(sorted(COLOURS), n)
    objects, taken = [], []
    for colour in colours:
        box = _place(rng, taken)
        if box is None:
            break
        objects.append({"colour": colour, "kind": rng.choice(KINDS), "box": box})
    base = np.array(rng.choice(BACKGROUNDS), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 6.0, (SIDE, SIDE, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in objects:
        _draw(draw, obj["kind"], obj["box"], COLOURS[obj["colour"]])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    jpeg = buf.getvalue()
    target = rng.randrange(len(objects))
    return {"image": Image.open(io.BytesIO(jpeg)).convert("RGB"), "jpeg": jpeg, "objects": objects,
            "target": target, "expression": expression(objects[target])}


def expression(obj: dict) -> str:
    return f"the {obj['colour']} {obj['kind']}"


def xyxy(box) -> list[int]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def answer(box) -> str:
    """The compact Qwen2.5-VL answer the model is trained to give (the registry parser reads ``"bbox_2d": [...]``)."""
    x1, y1, x2, y2 = xyxy(box)
    return '{"bbox_2d": [' + f"{x1}, {y1}, {x2}, {y2}" + "]}"


def chance(scenes: list[dict]) -> float:
    """Expected Acc@0.5 of answering a uniformly random object of the scene (objects never overlap, so 1/n)."""
    return float(np.mean([1.0 / len(s["objects"]) for s in scenes])) if scenes else 0.0


def write_mdetr_source(src: Path, n: int, seed: int, n_objects: tuple[int, int] = (2, 3)) -> tuple[Path, list[dict]]:
    """``n`` scenes (one expression each, scene seeds ``seed * 1_000_003 + i``) as MDETR JSON + JPEGs."""
    img_dir = Path(src) / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, scenes = [], [], []
    for i in range(n):
        s = scene(seed * 1_000_003 + i, n_objects)
        file_name = f"COCO_train2014_{i + 1:012d}.jpg"
        (img_dir / file_name).write_bytes(s["jpeg"])
        box = s["objects"][s["target"]]["box"]
        images.append({"id": i + 1, "file_name": file_name, "height": SIDE, "width": SIDE,
                       "caption": s["expression"], "original_id": i + 1})
        annotations.append({"id": i + 1, "image_id": i + 1, "bbox": box, "area": box[2] * box[3],
                            "iscrowd": 0, "category_id": 1})
        scenes.append(s)
    ann = Path(src) / f"{SPLIT}.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "shape"}]}), encoding="utf-8")
    return ann, scenes


def build_lmudata(root: Path, n: int, seed: int, n_objects: tuple[int, int] = (2, 3)) -> dict:
    """Write ``n`` held-out scenes under ``root`` and convert them (standard + ``--qwen25``) into LMUData TSVs."""
    from ivcprune.eval.demo_data import convert_both

    root = Path(root)
    src = root / "pocket_source"
    ann, scenes = write_mdetr_source(src, n, seed, n_objects)
    tsv = convert_both(ann, src / "train2014", root)
    return {"root": root, "tsv": tsv, "scenes": scenes, "n_rows": n, "chance": chance(scenes)}
