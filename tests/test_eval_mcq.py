"""Multiple choice (docs/HARNESS.md §6.1-6.3): prompt styles, rule extractor, judge hand-off, CircularEval."""

import base64
import csv
import io
import json

import pandas as pd
import pytest
from PIL import Image

from ivcprune.eval.datasets import load_dataset
from ivcprune.eval.datasets.mcq import extract_choice, mcq_text

OPTS = {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"}


class FakeJudge:
    """Scripted judge: replies by prediction text; records every batch it is asked."""

    active = True

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def mcq_many(self, items):
        self.calls.append([p for _, _, p in items])
        return [self.replies.get(p) for _, _, p in items]

    def report(self):
        return {"mode": "judge", "requested_model": "fake", "response_models": ["fake"], "reason": "",
                "n_judge_errors": sum(self.replies.get(p) is None for batch in self.calls for p in batch)}


@pytest.mark.parametrize("text,expected", [
    ("A", "A"),
    ("The answer is (B).", "B"),
    ("**C**: cat", "C"),
    ("I think D is right", "D"),            # 'I' is not a choice letter here
    ("A or B", None),                        # two letters, no single option text
    ("a cute teddy bear", "A"),              # option text
    ("a cat or a dog", None),                # two option texts
    ("b", None),                             # letters are case-sensitive
    ("E", None),
    ("Z", "Z"),
    ("none fits: Z.", "Z"),
    ("Sorry, I can't help with images of people yet.", "Z"),
    ("Cannot determine the answer A", "Z"),  # refusal wins over a letter
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTS) == expected


def test_prompt_styles():
    row = {"question": "What is it?", "hint": "A toy.", "A": "teddy bear", "B": "rabbit", "C": ""}
    assert mcq_text(row, "deepseek_vl2") == ("Hint: A toy.\nQuestion: What is it?\nOptions:\nA. teddy bear\nB. rabbit\n"
                                             "Please select the correct answer from the options above. \n")
    assert mcq_text(row, "qwen2_5_vl") == ("Hint: A toy.\nQuestion: What is it?\nOptions:\nA. teddy bear\nB. rabbit\n"
                                           "Please select the correct answer from the options above.")
    assert mcq_text(row, "internvl") == ("A toy.\nWhat is it?\nA. teddy bear\nB. rabbit\n"
                                         "Answer with the option's letter from the given choices directly.")
    assert mcq_text(row, "llava") == mcq_text(row, "internvl")
    cjk = {"question": "这是什么？", "A": "猫", "B": "狗"}
    assert mcq_text(cjk, "qwen2_vl").endswith("B. 狗\n请直接回答选项字母。")
    assert mcq_text(cjk, "internvl").endswith("\nB. 狗\n请直接回答选项字母。")
    bare = {"question": "Count them.  "}
    assert mcq_text(bare, "internvl") == "Count them.  \nAnswer the question directly."
    assert mcq_text(bare, "qwen2_5_vl") == "Question: Count them."
    assert mcq_text(bare, "deepseek_vl2") == "Question: Count them.  \n"


def _img():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)


def _preds(path, ds, outputs):
    pd.DataFrame({"index": ds.rows["index"], "prediction": [outputs[i] for i in ds.rows["index"]]}).to_csv(path,
                                                                                                         index=False)
    return path


def test_plain_mcq_with_and_without_judge(tmp_path):
    img = _img()
    header = ["index", "image", "question", "A", "B", "C", "answer", "category", "l2-category", "split"]
    _write(tmp_path / "MMStar.tsv", header, [
        [1, img, "q1", "cat", "dog", "", "A", "color", "perception", "dev"],
        [2, "1", "q2", "cat", "dog", "bird", "B", "count", "perception", "dev"],
        [3, "1", "q3", "cat", "dog", "bird", "C", "count", "reasoning", "dev"],
        [4, "1", "q4", "cat", "dog", "bird", "A", "color", "reasoning", "test"],
    ])
    ds = load_dataset("MMStar", root=tmp_path)
    assert ds.type == "MCQ"
    pred = _preds(tmp_path / "M_MMStar.csv", ds, {1: "A", 2: "hmm", 3: "no idea", 4: "C"})
    rep = ds.evaluate(pred, None)
    assert rep.metrics["Overall"] == 0.25 and rep.judge["mode"] == "exact_matching"
    assert "Overall=0.25" in rep.summary() and "judge: mode=exact_matching" in rep.summary()
    assert (rep.judge["n_rule"], rep.judge["n_judge"], rep.judge["n_unresolved"]) == (2, 0, 2)
    table = pd.read_csv(rep.files["acc_csv"])
    assert list(table.columns) == ["split", "Overall", "perception", "reasoning", "color", "count"]
    dev = table.iloc[0].to_dict()
    assert dev["split"] == "dev" and dev["Overall"] == pytest.approx(1 / 3) and dev["perception"] == 0.5
    assert dev["reasoning"] == 0.0 and dev["color"] == 1.0 and dev["count"] == 0.0
    assert table.iloc[1]["Overall"] == 0.0
    judge = FakeJudge({"hmm": "B", "no idea": None})
    rep = ds.evaluate(pred, judge)
    assert judge.calls == [["hmm", "no idea"]]            # only unresolved items go to the judge
    result = pd.read_csv(rep.files["result"], keep_default_na=False)
    assert list(result["match_source"]) == ["rule", "judge", "judge_error", "rule"]
    assert list(result["hit"]) == [True, True, False, False]
    score = json.loads(rep.files["score_json"].read_text())
    assert score["judge"]["n_judge"] == 1 and score["judge"]["n_unresolved"] == 1 and score["Overall"] == 0.5


def test_unknown_prediction_index_rejected(tmp_path):
    _write(tmp_path / "AI2D_TEST.tsv", ["index", "image", "question", "A", "B", "answer"],
           [[1, _img(), "q", "x", "y", "A"]])
    ds = load_dataset("AI2D_TEST", root=tmp_path)
    pred = tmp_path / "M_AI2D_TEST.csv"
    pd.DataFrame({"index": [1, 2], "prediction": ["A", "B"]}).to_csv(pred, index=False)
    with pytest.raises(Exception, match="not in AI2D_TEST"):
        ds.evaluate(pred, None)


def _circular(tmp_path):
    img = _img()
    rows = []
    # group -> [(index offset, answer, prediction)], main row index == group
    groups = {
        1: [("A", "A"), ("B", "B"), ("C", "C")],          # all rule-correct -> 1
        2: [("A", "B"), ("B", "unsure")],                 # one rule-wrong -> 0, judge never asked
        3: [("A", "A"), ("B", "hmm-3")],                  # judge fixes the unresolved row -> 1
        4: [("A", "maybe-4a"), ("B", "maybe-4b"), ("C", "C")],  # judge wrong on the first -> 0, second not asked
        5: [("A", "err-5")],                              # judge error -> 0
    }
    for g, members in groups.items():
        for k, (ans, _) in enumerate(members):
            rows.append([g + k * 1_000_000, img, f"q{g}", "cat", "dog", "bird", ans,
                         "cat1" if g < 3 else "cat2", "coarse_perception", "dev"])
    _write(tmp_path / "MMBench_DEV_EN_V11.tsv",
           ["index", "image", "question", "A", "B", "C", "answer", "category", "l2-category", "split"], rows)
    ds = load_dataset("MMBench_DEV_EN_V11", root=tmp_path)
    outputs = {g + k * 1_000_000: p for g, members in groups.items() for k, (_, p) in enumerate(members)}
    return ds, _preds(tmp_path / "M_MMBench_DEV_EN_V11.csv", ds, outputs)


def test_circular_eval_with_judge(tmp_path):
    ds, pred = _circular(tmp_path)
    judge = FakeJudge({"hmm-3": "B", "maybe-4a": "B", "maybe-4b": "B", "err-5": None, "unsure": "B"})
    rep = ds.evaluate(pred, judge)
    asked = [p for batch in judge.calls for p in batch]
    assert sorted(asked) == ["err-5", "hmm-3", "maybe-4a"]
    assert rep.metrics["Overall"] == pytest.approx(2 / 5) and rep.metrics["number"] == 5
    table = pd.read_csv(rep.files["acc_csv"])
    assert list(table.columns) == ["split", "Overall", "CP", "cat1", "cat2"]
    assert table.iloc[0]["cat1"] == 0.5 and table.iloc[0]["cat2"] == pytest.approx(1 / 3)


def test_circular_eval_exact_matching(tmp_path):
    ds, pred = _circular(tmp_path)
    rep = ds.evaluate(pred, None)
    assert rep.metrics["Overall"] == pytest.approx(1 / 5)        # only group 1 survives without a judge
    result = pd.read_csv(rep.files["result"], keep_default_na=False)
    assert list(result[result["index"] < 1_000_000]["group_hit"]) == [True, False, False, False, False]
