"""``ivcp run --batch-size``: grouping, per-row records, misses inside a batch, kill -9 mid-batch, resume, throughput
(issue 13). The scripted model logs one line per row and one line per generate call (its batch size)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from test_runner_support import calls, predictions, run_args, setup_env

from ivcprune.eval import batching, efficiency, runner
from ivcprune.eval.registry import resolve
from ivcprune.eval.wrappers.scripted import ScriptedModel
from ivcprune.testing import make_image


@pytest.fixture
def s(tmp_path, monkeypatch):
    env = setup_env(tmp_path, n=10, monkeypatch=monkeypatch)
    env["batch_log"] = tmp_path / "batches.log"
    env["env"]["IVCP_SCRIPTED_BATCH_LOG"] = str(env["batch_log"])
    monkeypatch.setenv("IVCP_SCRIPTED_BATCH_LOG", str(env["batch_log"]))
    return env


def batches(s) -> list[int]:
    return [int(x) for x in s["batch_log"].read_text().split()] if s["batch_log"].exists() else []


def part_records(s) -> list[dict]:
    part = s["work"] / "Scripted_IVCP" / ".parts" / "Scripted_IVCP_POPE.r0.jsonl"
    return [json.loads(line) for line in part.read_text().splitlines()] if part.exists() else []


# ------------------------------------------------------------------------------------------------ pure pieces
def test_windows_and_groups():
    rows = list(range(70))
    assert batching.windows(rows, 1) == [[i] for i in rows]  # batch 1: file order, one row at a time
    assert [len(w) for w in batching.windows(rows, 4)] == [64, 6]
    sizes = {i: (1, (i * 7) % 5, 0) for i in range(10)}
    groups = batching.group(list(range(10)), 4, key=sizes.get)
    assert [len(g) for g in groups] == [4, 4, 2]
    keys = [sizes[i] for g in groups for i in g]
    assert keys == sorted(keys)  # sorted by size, stable: equal sizes keep file order
    assert groups[0] == [0, 5, 3, 8]
    assert batching.group(list(range(5)), 1, key=sizes.get) == [[0], [1], [2], [3], [4]]


def test_size_key_uses_the_frame_the_model_sees():
    model = ScriptedModel(resolve("Qwen2.5-VL-7B-Instruct", model_path="/x"))
    small = [("image", make_image(60, 50)), ("text", "a long question text")]
    large = [("image", make_image(300, 200)), ("text", "q")]
    assert batching.size_key(model, small) == (1, 56 * 56, 20)
    assert batching.size_key(model, small) < batching.size_key(model, large)
    assert batching.size_key(model, [("text", "only text")]) == (0, 0, 9)


def test_batch_size_resolution_and_fingerprint_ignore_it():
    entry = resolve("Qwen2.5-VL-7B-Instruct_IVCP", model_path="/x")
    assert batching.batch_size_of(None, entry) == 1
    set8 = resolve("Qwen2.5-VL-7B-Instruct_IVCP", model_path="/x", sets={"generation.batch_size": 8})
    assert batching.batch_size_of(None, set8) == 8 and batching.batch_size_of(3, set8) == 3
    stripped = batching.fingerprint_entry(set8)
    assert stripped.fingerprint_payload() == entry.fingerprint_payload()
    assert set8.get("generation")["batch_size"] == 8  # the entry itself is untouched


def test_efficiency_summary_reports_batch_size_and_throughput():
    rows = [{"stats": {"image_tokens": 10, "kept_tokens": 5, "prefill_ms": 40.0, "decode_ms": 90.0, "new_tokens": n,
                       "decode_steps": 10, "batch_size": 4, "batch_ms": 400.0}} for n in (3, 10, 10, 7)]
    rows += [{"stats": {"image_tokens": 10, "kept_tokens": 5, "prefill_ms": 20.0, "decode_ms": 10.0, "new_tokens": 3,
                        "decode_steps": 3, "batch_size": 2, "batch_ms": 100.0}} for _ in range(2)]
    eff = efficiency.summarize(rows, pruned=True)
    assert eff["batch_size"] == 4
    assert eff["rows_per_s"] == pytest.approx(6 / 0.5)  # 6 rows in 400 + 100 ms
    assert eff["decode_ms_per_token"] == pytest.approx((4 * 10.0 + 2 * 5.0) / 6)  # over the batch's steps
    assert "batch 4" in efficiency.format_summary("m", "d", eff) and "12.00 rows/s" in efficiency.format_summary(
        "m", "d", eff)


# ------------------------------------------------------------------------------------------------ the runner
def test_batches_write_rows_one_by_one_and_match_batch_1(s):
    assert runner.cli_main(run_args(s, "--limit", "7")) == 0
    one = predictions(s["work"], stem="POPE_limit7")
    assert batches(s) == [1] * 7
    assert runner.cli_main(run_args(s, "--batch-size", "3", work=s["work"] / "b3")) == 0
    assert batches(s)[7:] == [3, 3, 3, 1]
    three = predictions(s["work"] / "b3")
    assert list(three["index"]) == [str(i) for i in range(10)]
    assert list(three["prediction"][:7]) == list(one["prediction"])
    stats = [json.loads(x) for x in three["ivcp_stats"]]
    assert [st["batch_size"] for st in stats] == [3] * 9 + [1]
    assert all(st["batch_ms"] > 0 for st in stats)
    eff = json.loads((s["work"] / "b3" / "Scripted_IVCP" / "Scripted_IVCP_POPE_efficiency.json").read_text())
    assert eff["batch_size"] == 3 and eff["rows_per_s"] > 0 and eff["rows_timed"] == 7  # first batch: warm-up


def test_registry_batch_size_and_resume_at_another_batch_size(s):
    assert runner.cli_main(run_args(s, "--limit", "4", "--set", "generation.batch_size=4")) == 0
    assert batches(s) == [4]
    # the same rows at another batch size: the fingerprint does not change, the complete file is reused
    assert runner.cli_main(run_args(s, "--limit", "4", "--batch-size", "2")) == 0
    assert batches(s) == [4]
    assert runner.cli_main(run_args(s, "--batch-size", "0")) == 2
    assert runner.cli_main(run_args(s, "--set", "generation.batch_size=0")) == 2


def test_failing_rows_inside_a_batch(s, monkeypatch):
    """A corrupt image never reaches the model; a generate failure retries the batch row by row once, and only the
    row that fails alone too is a miss."""
    import pandas as pd

    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "1", "image"] = "!!!not-base64!!!" * 8
    df.to_csv(tsv, sep="\t", index=False)
    monkeypatch.setenv("IVCP_SCRIPTED_FAIL", "number 6?")
    assert runner.cli_main(run_args(s, "--batch-size", "4", "--max-failed-rows", "0.3")) == 0
    # rows 0,2,3,4 | 5,6,7,8 (fails as a batch, then 5, 6, 7, 8 alone) | 9
    assert batches(s) == [4, 4, 1, 1, 1, 1, 1]
    assert not any("number 1?" in c for c in calls(s))
    preds = predictions(s["work"])
    errors = dict(zip(preds["index"], preds["ivcp_error"]))
    assert errors["1"].startswith("bad image") and "scripted failure" in errors["6"]
    assert [i for i, e in errors.items() if e] == ["1", "6"]
    stats = dict(zip(preds["index"], preds["ivcp_stats"]))
    assert json.loads(stats["5"])["batch_size"] == 1 and json.loads(stats["0"])["batch_size"] == 4
    monkeypatch.delenv("IVCP_SCRIPTED_FAIL")
    before = len(calls(s))
    assert runner.cli_main(run_args(s, "--batch-size", "4", "--max-failed-rows", "0.3")) == 0  # misses retried
    assert calls(s)[before:] == ["Is there an object number 6? Please answer yes or no."]


def test_kill9_mid_batch_then_resume(s):
    """Batches of 4, one second each: killed during the second batch, the first batch's 4 rows are on disk and the
    batch in flight is lost whole; the rerun generates exactly the 6 other rows, each once."""
    env = dict(s["env"], IVCP_SCRIPTED_SLEEP="1.0")
    proc = subprocess.Popen([sys.executable, "-m", "ivcprune", "run", *run_args(s, "--batch-size", "4")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(batches(s)) < 2:
        time.sleep(0.02)
    time.sleep(0.2)  # the second batch is generating
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = part_records(s)
    assert [r["index"] for r in done] == [0, 1, 2, 3] and batches(s) == [4, 4]
    in_flight = calls(s)[4:8]
    before = len(calls(s))
    assert runner.cli_main(run_args(s, "--batch-size", "4")) == 0
    again = calls(s)[before:]
    assert len(again) == 6 and len(set(again)) == 6 and set(in_flight) <= set(again)
    assert not any(f"number {i}?" in c for c in again for i in range(4))
    assert list(predictions(s["work"])["index"]) == [str(i) for i in range(10)]


def test_two_ranks_each_batch_their_own_shard(tmp_path, monkeypatch):
    from test_runner_dist import TORCHRUN, _kill, _torchrun

    if TORCHRUN is None:
        pytest.skip("torchrun not installed")
    s = setup_env(tmp_path, n=10, monkeypatch=monkeypatch)
    log = tmp_path / "batches.log"
    env = dict(s["env"], OMP_NUM_THREADS="1", IVCP_SCRIPTED_BATCH_LOG=str(log))
    proc = _torchrun(run_args(s, "--dist-timeout", "60", "--batch-size", "3"), env)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        _kill(proc)
    assert proc.returncode == 0, out
    assert sorted(int(x) for x in log.read_text().split()) == [2, 2, 3, 3]  # 5 rows per rank: 3 + 2
    assert len(calls(s)) == 10 and len(set(calls(s))) == 10
    single = tmp_path / "single"
    assert runner.cli_main(run_args(s, work=single)) == 0
    cols = ["index", "prediction", "ivcp_error", "ivcp_fp", "ivcp_kept_tokens"]
    assert predictions(s["work"])[cols].equals(predictions(single)[cols])


def batch_1_and(size: int, common: list[str], tmp_path, name: str, dataset: str):
    """The predictions files of one runner invocation at batch 1 and at ``size`` (same arguments otherwise)."""
    assert runner.cli_main([*common, "--work-dir", str(tmp_path / "b1")]) == 0
    assert runner.cli_main([*common, "--work-dir", str(tmp_path / f"b{size}"), "--batch-size", str(size)]) == 0
    return (predictions(tmp_path / "b1", model=name, stem=dataset),
            predictions(tmp_path / f"b{size}", model=name, stem=dataset))


@pytest.mark.parametrize("family,model", [("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct_Grounding_IVCP"),
                                          ("internvl", "InternVL3-8B_ivcp")])
def test_real_tiny_model_batch_8_equals_batch_1_through_the_runner(family, model, tmp_path, monkeypatch):
    """The demo's synthetic RefCOCO split (scenes of several sizes) on a tiny checkpoint, pruned at K = 2: the
    predictions file of --batch-size 8 equals batch 1's row for row, kept tokens included."""
    from ivcprune.eval.demo_data import build_demo_lmudata
    from ivcprune.testing import tiny_checkpoint

    data = tmp_path / "LMUData"
    build_demo_lmudata(data, n=12, seed=3)
    monkeypatch.setenv("LMUData", str(data))
    dataset = "RefCOCO_testA_for_qwen25vl" if family == "qwen2_5_vl" else "RefCOCO_testA"
    common = ["--model", model, "--data", dataset, "--model-path", str(tiny_checkpoint(family)), "--layer", "2",
              "--set", "generation.max_new_tokens=8", "--mode", "infer"]
    one, eight = batch_1_and(8, common, tmp_path, f"{model}_k2", dataset)
    cols = ["index", "prediction", "raw_prediction", "ivcp_error", "ivcp_image_tokens", "ivcp_kept_tokens",
            "ivcp_new_tokens", "ivcp_fp"]
    assert one[cols].equals(eight[cols])
    assert one["ivcp_image_tokens"].nunique() > 1  # rows of several sizes: the batches were padded
    sizes = [json.loads(x)["batch_size"] for x in eight["ivcp_stats"]]
    assert sorted(sizes) == [4] * 4 + [8] * 8


@pytest.mark.parametrize("model", ["Qwen2.5-VL-7B-Instruct_Grounding_IVCP", "Qwen2.5-VL-7B-Instruct_Grounding_Random"])
def test_pocket_model_batch_8_equals_batch_1_through_the_runner(model, tmp_path, monkeypatch):
    """The bundled pocket model (what `ivcp demo` runs, at its default batch size 8) on held-out pocket scenes at the
    demo's K and retention: batch 8 writes the same predictions, kept tokens and answer lengths as batch 1, for
    IVC-Prune and for the random draw (seeded per image, not per batch position)."""
    from ivcprune.pocket.scenes import build_lmudata
    from ivcprune.tools.demo import (DEMO_BATCH_SIZE, DEMO_LAYER, DEMO_MAX_NEW_TOKENS, RETENTION, pocket_model_dir,
                                     task_objects)

    checkpoint = pocket_model_dir()
    build_lmudata(tmp_path / "LMUData", n=16, seed=11, n_objects=task_objects(checkpoint))
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    dataset = "RefCOCO_testA_for_qwen25vl"
    common = ["--model", model, "--data", dataset, "--model-path", str(checkpoint), "--layer", str(DEMO_LAYER),
              "--retention", str(RETENTION), "--set", f"generation.max_new_tokens={DEMO_MAX_NEW_TOKENS}",
              "--mode", "infer"]
    name = resolve(model, model_path=str(checkpoint), layer=DEMO_LAYER, retention=RETENTION).name
    one, eight = batch_1_and(DEMO_BATCH_SIZE, common, tmp_path, name, dataset)
    cols = ["index", "prediction", "raw_prediction", "ivcp_error", "ivcp_kept_tokens", "ivcp_new_tokens", "ivcp_fp"]
    assert len(one) == 16 and one[cols].equals(eight[cols])
    assert one["raw_prediction"].str.contains("bbox_2d").all()  # the trained model answers boxes: a real comparison
    assert one["prediction"].nunique() > 8
    assert [json.loads(x)["batch_size"] for x in eight["ivcp_stats"]] == [DEMO_BATCH_SIZE] * 16


def test_throughput_script_draws_earlier_runs_into_one_picture(tmp_path):
    """scripts/batch_throughput.py --plot-from: the README's picture is drawn from the runs' throughput.json files."""
    import importlib.util

    from PIL import Image

    from test_runner_support import REPO

    spec = importlib.util.spec_from_file_location("batch_throughput", REPO / "scripts" / "batch_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def run(share, ups):
        settings = {str(b): {"speedup_vs_first": u} for b, u in zip((1, 4, 8, 16), ups)}
        return {"prefill_share_first": share, "settings": settings}

    files = []
    for name, res in (("one.json", {"pocket": run(0.18, (1, 2.4, 3.4, 4.1))}),
                      ("two.json", {"bench": run(0.74, (1, 1.05, 0.99, 0.95))})):
        (tmp_path / name).write_text(json.dumps({"results": res}))
        files.append(str(tmp_path / name))
    png = tmp_path / "throughput.png"
    assert script.main(["--plot-from", *files, "--png", str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400
