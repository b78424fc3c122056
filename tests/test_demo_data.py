"""The embedded synthetic RefCOCO sample: deterministic, converted by our converter, loadable."""

import time

from ivcprune.eval.datasets import load_dataset
from ivcprune.eval.datasets.grounding import qwen25_frame
from ivcprune.eval.demo_data import build_demo_lmudata
from ivcprune.eval.tsv import parse_numbers


def test_demo_builds_fast_and_deterministically(tmp_path):
    start = time.perf_counter()
    info = build_demo_lmudata(tmp_path / "a", n=24, seed=0)
    assert time.perf_counter() - start < 3
    build_demo_lmudata(tmp_path / "b", n=24, seed=0)
    other = build_demo_lmudata(tmp_path / "c", n=24, seed=1)
    assert info["datasets"] == ["RefCOCO_testA", "RefCOCO_testA_for_qwen25vl"]
    for name in info["datasets"]:
        a = (tmp_path / "a" / f"{name}.tsv").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.tsv").read_bytes()
        assert a != other["tsv"][name].read_bytes()
    assert info["annotations"].name == "finetune_refcoco_testA.json"


def test_demo_loads_as_grounding_datasets(tmp_path):
    build_demo_lmudata(tmp_path, n=10, seed=3)
    std = load_dataset("RefCOCO_testA", root=tmp_path)
    q25 = load_dataset("RefCOCO_testA_for_qwen25vl", root=tmp_path)
    assert len(std) == len(q25) == 10
    assert list(std.rows["index"]) == list(q25.rows["index"])
    sizes = set()
    for (_, r), (_, q) in zip(std.rows.iterrows(), q25.rows.iterrows()):
        img = std.image(r)
        assert img.size == (r["width"], r["height"])
        sizes.update((r["width"], r["height"]))
        x1, y1, x2, y2 = parse_numbers(r["answer"])
        assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
        Wn, Hn = qwen25_frame(r["width"], r["height"])
        qx1, qy1, qx2, qy2 = parse_numbers(q["answer"])
        assert qx1 == int(round(x1 * Wn / r["width"])) and qy2 == int(round(y2 * Hn / r["height"]))
        assert r["question"].split()[-1] in ("circle", "square", "triangle", "left", "right")
    assert any(s % 28 for s in sizes)
