"""Grounding (docs/HARNESS.md §5): prompts, per-family parsers and mappings, IoU, scoring files, frame guard."""

import base64
import csv
import io
import json

import pandas as pd
import pytest
from PIL import Image

from ivcprune.eval.datasets import load_dataset
from ivcprune.eval.datasets.grounding import (FrameError, check_frame, format_box, frame_mismatch,
                                              grounding_text, iou, parse_and_map, parse_box)


def test_prompts():
    assert grounding_text("Man In Red", "qwen2_5_vl") == \
        "\nLocate Man In Red and output the bbox coordinates in JSON format."
    assert grounding_text("Man In Red", "qwen2_vl") == "\n<|object_ref_start|>Detect man in red<|object_ref_end|>"
    assert grounding_text("dog", "internvl") == \
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>dog</ref>"
    assert grounding_text("dog", "deepseek_vl2") == "Locate <|ref|>dog<|/ref|> in the given image."
    assert grounding_text("dog", "llava") == \
        "Please provide the bounding box coordinate of the region this sentence describes: dog"


@pytest.mark.parametrize("family,text,expected", [
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [10, 20, 30, 40], "label": "dog"}\n]\n```', [10, 20, 30, 40]),
    ("qwen2_5_vl", '{"bbox_2d":[10,20,  30,\n40]}', [10, 20, 30, 40]),
    ("qwen2_5_vl", '{"bbox_2d": [10.5, 20, 30, 40]}', None),      # floats fail
    ("qwen2_5_vl", '{"bbox_2d": [-1, 20, 30, 40]}', None),        # negatives fail
    ("qwen2_5_vl", '{"bbox_2d": [ 10, 20, 30, 40]}', None),
    ("qwen2_5_vl", "[10, 20, 30, 40]", None),
    ("qwen2_vl", "<|box_start|>(100,200),(300,400)<|box_end|>", [100, 200, 300, 400]),
    ("qwen2_vl", "(100, 200),(300,400)", None),                    # no spaces allowed
    ("internvl", "[[100, 200, 300, 400]]", [100, 200, 300, 400]),
    ("internvl", "the box is [1.5,2,3,4] ok", [1.5, 2, 3, 4]),
    ("internvl", "[[[1, 2, 3, 4]]]", None),                        # only one extra '[' allowed
    ("internvl", "[1, 2,\n3, 4]", None),                           # must stay on one line
    ("internvl", "[a, 2, 3, 4] then [1, 2, 3, 4]", None),          # first match only, fields must be floats
    ("internvl", "no box", None),
    ("deepseek_vl2", "<|ref|>dog<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>.", [100, 200, 300, 400]),
    ("llava", "[0.1, 0.2, 0.5, 0.6]", [0.1, 0.2, 0.5, 0.6]),
])
def test_parsers(family, text, expected):
    assert parse_box(text, family) == expected


def test_mappings():
    assert parse_and_map('"bbox_2d": [10, 20, 30, 40]', "qwen2_5_vl", 999, 999) == [10, 20, 30, 40]
    assert parse_and_map("(100,200),(300,400)", "qwen2_vl", 500, 1000) == [50, 200, 150, 400]
    assert parse_and_map("[[100, 200, 300, 400]]", "internvl", 500, 250) == [50, 50, 150, 100]
    assert parse_and_map("[[999, 0, 999, 999]]", "deepseek_vl2", 640, 480) == [640, 0, 640, 480]
    assert parse_and_map("[[500, 0, 1000, 1000]]", "deepseek_vl2", 640, 480, box_scale=1000) == [320, 0, 640, 480]
    # LLaVA pad-to-square: S = 200, the 100 px high image sits 50 px down in the square
    assert parse_and_map("[0.1, 0.25, 0.5, 0.75]", "llava", 200, 100) == [20, 0, 100, 100]
    assert parse_and_map("[0.25, 0.5, 0.75, 1.0]", "llava", 101, 200) == [1, 100, 101, 200]   # (200-101)//2 = 49


def test_iou():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 10, 10]) == 0.0
    assert iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0        # no reordering


def test_frame_guard_and_mismatch():
    check_frame("RefCOCO_testA_for_qwen25vl", "qwen2_5_vl")
    check_frame("RefCOCO_testA", "internvl")
    with pytest.raises(FrameError, match="RefCOCO_testA_for_qwen25vl"):
        check_frame("RefCOCO_testA", "qwen2_5_vl")
    with pytest.raises(FrameError, match="--force-frame"):
        check_frame("RefCOCOg_val_for_qwen25vl", "llava")
    check_frame("RefCOCO_testA", "qwen2_5_vl", force_frame=True)
    assert not frame_mismatch((112, 56), 98, 70)
    assert frame_mismatch((112, 84), 98, 70)


def _vg_tsv(root, name="RefCOCO_testA"):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    rows = [["index", "image", "question", "height", "width", "answer"],
            [1, img, "exact", 1000, 1000, "100 100 300 300"],
            [2, "1", "second box", 1000, 1000, "0 0 100 100 500 500 700 700"],
            [3, "1", "zeros", 1000, 1000, "0 0 100 100"],
            [4, "1", "garbage", 1000, 1000, "0 0 100 100"],
            [5, "1", "half", 1000, 1000, "0 0 100 100"],
            [6, "1", "bad image", 1000, 1000, "0 0 100 100"]]
    with open(root / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows(rows)


def test_evaluate_internvl(tmp_path):
    _vg_tsv(tmp_path)
    ds = load_dataset("RefCOCO_testA", root=tmp_path)
    assert ds.type == "VG" and len(ds) == 6
    parts = ds.build_prompt(ds.rows.iloc[1], "internvl")
    assert [p[0] for p in parts] == ["image", "text"] and parts[0][1].size == (20, 10)
    outputs = {1: "[[100, 100, 300, 300]]", 2: "[[500, 500, 700, 700]]", 3: "[[0, 0, 0, 0]]", 4: "I cannot see it",
               5: "[[0, 0, 100, 50]]", 6: ""}
    records = []
    for _, row in ds.rows.iterrows():
        rec = {"index": row["index"], "question": row["question"], "answer": row["answer"],
               **ds.record_fields(row, outputs[row["index"]], "internvl")}
        rec["error"] = "bad image: corrupt" if row["index"] == 6 else ""
        records.append(rec)
    assert records[0]["prediction"] == "[100, 100, 300, 300]"
    assert records[3]["prediction"] == "[0, 0, 0, 0]"
    pred = tmp_path / "out" / "M_RefCOCO_testA.csv"
    pred.parent.mkdir()
    pd.DataFrame(records).to_csv(pred, index=False)
    rep = ds.evaluate(pred, None, family="internvl")
    m = rep.metrics
    assert (m["TP"], m["number"], m["accuracy"]) == (2, 6, 2 / 6)       # exact + IoU exactly 0.5
    assert m["acc@0.75"] == pytest.approx(1 / 6)
    assert m["mean_iou"] == pytest.approx(1.5 / 6)
    assert (m["parse_failures"], m["infer_errors"]) == (1, 1)
    result = pd.read_csv(rep.files["result"], keep_default_na=False)
    assert list(result.columns[:9]) == ["index", "question", "answer", "raw_prediction", "pred_box", "parse_ok",
                                        "iou", "hit@0.5", "hit@0.75"]
    assert list(result["iou"]) == [1.0, 0.0, 0.0, 0.0, 0.5, 0.0]        # row 2: second GT box is ignored
    assert list(result["parse_ok"]) == [True, True, True, False, True, False]
    score = json.loads(rep.files["score_json"].read_text())
    assert score["accuracy"] == pytest.approx(1 / 3) and score["errors"] == [{"index": 6, "error": "bad image: corrupt"}]
    assert set(score) >= {"accuracy", "TP", "number", "acc@0.75", "mean_iou", "parse_failures", "infer_errors",
                          "frame_mismatches"}


def test_foreign_prediction_file(tmp_path):
    """Without raw_prediction the official rule applies: all values <= 1.1 are fractions of W and H."""
    _vg_tsv(tmp_path)
    ds = load_dataset("RefCOCO_testA", root=tmp_path)
    preds = ["[0.1, 0.1, 0.3, 0.3]", "[0, 0, 100, 100]", "[0, 0, 0, 0]", "oops", "[0, 0, 100, 50]", "[0, 0, 100, 100]"]
    pred = tmp_path / "F_RefCOCO_testA.xlsx"
    pd.DataFrame({"index": ds.rows["index"], "prediction": preds}).to_excel(pred, index=False)
    rep = ds.evaluate(pred, None)
    assert rep.metrics["TP"] == 4 and rep.metrics["parse_failures"] == 2


def test_frame_mismatch_column(tmp_path):
    _vg_tsv(tmp_path, "RefCOCO_val_for_qwen25vl")
    ds = load_dataset("RefCOCO_val_for_qwen25vl", root=tmp_path)
    records = []
    for _, row in ds.rows.iterrows():
        size = (1008, 1008) if row["index"] != 2 else (1008, 980)
        rec = ds.record_fields(row, '{"bbox_2d": [100, 100, 300, 300]}', "qwen2_5_vl", input_size=size)
        records.append({"index": row["index"], **rec})
    pred = tmp_path / "Q_RefCOCO_val_for_qwen25vl.csv"
    pd.DataFrame(records).to_csv(pred, index=False)
    rep = ds.evaluate(pred, None, family="qwen2_5_vl")
    assert rep.metrics["frame_mismatches"] == 1 and rep.metrics["TP"] == 1


def test_prediction_file_must_match_dataset(tmp_path):
    _vg_tsv(tmp_path)
    ds = load_dataset("RefCOCO_testA", root=tmp_path)
    pred = tmp_path / "M_RefCOCO_testA.csv"
    pd.DataFrame({"index": [1, 99], "prediction": ["x", "y"]}).to_csv(pred, index=False)
    with pytest.raises(Exception, match="not in RefCOCO_testA"):
        ds.evaluate(pred, None)
