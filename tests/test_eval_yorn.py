"""Yes/No benchmarks (docs/HARNESS.md §6.4): extraction, prompts, MME / POPE / HallusionBench on hand tables."""

import base64
import csv
import io
import json

import pandas as pd
import pytest
from PIL import Image

from ivcprune.eval.datasets import load_dataset
from ivcprune.eval.datasets.yorn import extract_yorn, yorn_text


@pytest.mark.parametrize("text,expected", [
    ("Yes", "Yes"), ("No.", "No"), ("yes, it is.", "Yes"), ("NO", "No"),
    ("Yes and no", "Unknown"), ("", "Unknown"), ("I don't know", "Unknown"),
    ("no-entry sign", "No"),              # '-' not next to a space: becomes a space
    ("yes-man", "Yes"),
    ("1,000 yes-men", "Unknown"),         # digit,comma,digit: punctuation deleted -> 'yesmen'
    ("not.yes", "Unknown"),               # periods are deleted, not spaced
    ("(yes)", "Yes"),
    ("yes - no", "Unknown"),
])
def test_extract_yorn(text, expected):
    assert extract_yorn(text) == expected


def test_yorn_prompts():
    row = {"question": "Is there a dog?"}
    assert yorn_text(row, "qwen2_5_vl", "POPE") == "Is there a dog? Please answer yes or no."
    assert yorn_text(row, "qwen2_vl", "MME") == "Is there a dog?"
    assert yorn_text(row, "internvl", "MME") == "Is there a dog? Answer the question using a single word or phrase."
    assert yorn_text(row, "internvl", "HallusionBench") == \
        "Is there a dog? Please answer yes or no. Answer the question using a single word or phrase."
    assert yorn_text(row, "internvl", "POPE") == "Is there a dog?"
    assert yorn_text(row, "llava", "HallusionBench") == "Is there a dog?"
    assert yorn_text(row, "deepseek_vl2", "POPE") == "Is there a dog?"


class FakeJudge:
    active = True

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def yorn_many(self, items):
        self.calls.append([p for _, p in items])
        return [self.replies.get(p) for _, p in items]

    def report(self):
        return {"mode": "judge", "requested_model": "fake", "response_models": ["fake"], "reason": "", "n_judge_errors": 0}


def _setup(tmp_path, name, header, rows, outputs):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    with open(tmp_path / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image"] + header)
        w.writerows([[r[0], img if k == 0 else str(rows[0][0])] + list(r[1:]) for k, r in enumerate(rows)])
    ds = load_dataset(name, root=tmp_path)
    pred = tmp_path / f"M_{name}.csv"
    pd.DataFrame({"index": ds.rows["index"], "prediction": outputs}).to_csv(pred, index=False)
    return ds, pred


def test_mme_hand_computed(tmp_path):
    rows = [  # index, question, answer, category, image_path
        (1, "q", "Yes", "existence", "e1.jpg"), (2, "q", "No", "existence", "e1.jpg"),
        (3, "q", "Yes", "existence", "e2.jpg"), (4, "q", "No", "existence", "e2.jpg"),
        (5, "q", "Yes", "OCR", "o1.jpg"), (6, "q", "No", "OCR", "o1.jpg"),
        (7, "q", "Yes", "code_reasoning", "c1.jpg"), (8, "q", "No", "code_reasoning", "c1.jpg")]
    outputs = ["Yes", "No", "Yes.", "yes", "Yes", "Yes", "yes", "no"]
    ds, pred = _setup(tmp_path, "MME", ["question", "answer", "category", "image_path"], rows, outputs)
    assert ds.type == "YN"
    rep = ds.evaluate(pred, None)
    m = rep.metrics
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125; OCR: 50 + 0; code_reasoning: 100 + 100
    assert m["existence"] == 125 and m["OCR"] == 50 and m["code_reasoning"] == 200
    assert m["perception"] == 175 and m["reasoning"] == 200 and m["cognition"] == 200
    table = pd.read_csv(rep.files["score_csv"])
    assert list(table.columns[:3]) == ["perception", "reasoning", "cognition"]


def test_pope_hand_computed(tmp_path):
    rows = [  # index, question, answer, category
        (1, "q", "Yes", "adversarial"), (2, "q", "Yes", "adversarial"), (3, "q", "No", "adversarial"),
        (4, "q", "No", "adversarial"), (5, "q", "Yes", "popular"), (6, "q", "No", "popular"),
        (7, "q", "No", "popular"), (8, "q", "Yes", "popular,random")]
    outputs = ["Yes", "No", "No", "Yes", "Yes", "No", "I am not sure", "yes"]
    ds, pred = _setup(tmp_path, "POPE", ["question", "answer", "category"], rows, outputs)
    rep = ds.evaluate(pred, None)
    table = pd.read_csv(rep.files["score_csv"]).set_index("split")
    # exploded: 9 rows; TP 4 (1, 5, 8 twice), FN 1 (2), FP 1 (4), TN 3 (3, 6, 7: Unknown counts as No)
    overall = table.loc["Overall"]
    assert overall["Overall"] == pytest.approx(80) and overall["precision"] == pytest.approx(80)
    assert overall["recall"] == pytest.approx(80) and overall["acc"] == pytest.approx(600 / 9)
    assert table.loc["adversarial"].tolist() == pytest.approx([50, 50, 50, 50])
    assert table.loc["popular"].tolist() == pytest.approx([100, 75, 100, 100])
    assert table.loc["random"].tolist() == pytest.approx([100, 100, 100, 100])
    assert rep.metrics["Overall"] == pytest.approx(80)
    judge = FakeJudge({"I am not sure": "No"})
    rep = ds.evaluate(pred, judge)
    assert judge.calls == [["I am not sure"]]
    assert rep.metrics["acc"] == pytest.approx(700 / 9)
    assert json.loads(rep.files["score_json"].read_text())["judge"]["n_judge"] == 1


def test_hallusionbench(tmp_path):
    rows = [  # index (field 3 set, 4 figure, 5 question), question, answer, category, l2-category
        ("VD_chart_x_0_0_0", "q", "Yes", "chart", "VD"), ("VD_chart_x_0_0_1", "q", "No", "chart", "VD"),
        ("VD_chart_x_0_1_0", "q", "Yes", "chart", "VD"), ("VD_chart_x_0_1_1", "q", "No", "chart", "VD")]
    outputs = ["Yes", "Yes", "Yes", "No"]
    ds, pred = _setup(tmp_path, "HallusionBench", ["question", "answer", "category", "l2-category"], rows, outputs)
    assert ds.rows["index"].tolist()[0] == "VD_chart_x_0_0_0"
    rep = ds.evaluate(pred, None)
    assert (rep.metrics["aAcc"], rep.metrics["fAcc"], rep.metrics["qAcc"]) == (75, 50, 50)


def test_judge_error_counts_wrong(tmp_path):
    rows = [(1, "q", "Yes", "a"), (2, "q", "No", "a")]
    ds, pred = _setup(tmp_path, "POPE", ["question", "answer", "category"], rows, ["maybe", "no"])
    rep = ds.evaluate(pred, FakeJudge({}))
    result = pd.read_csv(rep.files["result"], keep_default_na=False)
    assert list(result["match_source"]) == ["judge_error", "rule"]
    assert rep.judge["n_unresolved"] == 1 and rep.metrics["acc"] == 50


# --- open VQA (§6.5) reuses the punctuation rule above; its scorers are checked here too --------------------
def test_vqa_scorers():
    from ivcprune.eval.datasets.vqa import anls, normalize_vqa, ocr_hit, relaxed_correct, vqa_score, vqa_text
    assert normalize_vqa("The  Two dogs, dont!\n") == "2 dogs don't"
    assert vqa_score("two", ["2"] * 3 + ["x"] * 7) == pytest.approx(0.9)    # (3 * 2/3 + 7 * 0) ... + min(1, 3/3)
    assert vqa_score("2", ["2"] * 10) == 1.0
    assert relaxed_correct("12%", "0.121") and relaxed_correct("100", "104.9") and not relaxed_correct("100", "105.1")
    assert not relaxed_correct("0", "0.0") and relaxed_correct("Yes", "yes")
    assert anls("hello world", ["Hello  World"]) == 1.0 and anls("helo", ["hello"]) == pytest.approx(0.8)
    assert anls("abc", ["xyz"]) == 0.0
    assert ocr_hit("The text is HELLO", ["hello"], "Regular Text Recognition")
    assert ocr_hit("a + b", ["a+b"], "Handwritten Mathematical Expression Recognition")
    assert vqa_text({"question": "What?"}, "internvl") == "What?\nAnswer the question using a single word or phrase."
    assert vqa_text({"question": "What?"}, "llava") == "What?"


def test_textvqa_and_ocrbench_files(tmp_path):
    rows = [(1, "q", str(["2"] * 10), "val"), (2, "q", str(["cat"] * 2 + ["dog"] * 8), "val")]
    ds, pred = _setup(tmp_path, "TextVQA_VAL", ["question", "answer", "split"], rows, ["two", "a cat"])
    assert ds.type == "VQA"
    assert ds.evaluate(pred, None).metrics["Overall"] == pytest.approx((1 + 0.6) / 2 * 100)
    rows = [(1, "q", str(["hello"]), "Regular Text Recognition"), (2, "q", str(["x+y"]), "Doc-oriented VQA")]
    ds, pred = _setup(tmp_path, "OCRBench", ["question", "answer", "category"], rows, ["HELLO there", "no"])
    m = ds.evaluate(pred, None).metrics
    assert (m["Text Recognition"], m["Final Score"], m["Final Score Norm"]) == (1, 1, 0.1)


def test_inference_errors_are_misses_listed_in_the_score_file(tmp_path):
    rows = [(1, "q", "Yes", "a"), (2, "q", "No", "a"), (3, "q", "Yes", "a")]
    ds, pred = _setup(tmp_path, "POPE", ["question", "answer", "category"], rows, ["yes", "no", ""])
    df = pd.read_csv(pred)
    df["ivcp_error"] = ["", "", "bad image: invalid base64"]
    df.to_csv(pred, index=False)
    rep = ds.evaluate(pred, None)
    payload = json.loads(rep.files["score_json"].read_text())
    assert payload["n_infer_errors"] == 1
    assert payload["errors"] == [{"index": 3, "error": "bad image: invalid base64"}]
    assert rep.metrics["acc"] == pytest.approx(200 / 3)
