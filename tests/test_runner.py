"""Runner with the scripted Model: layout, resume, errors, fingerprints, locks (docs/HARNESS.md §9, §13, §14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_runner_support import calls, cli, predictions, run_args, setup_env

from ivcprune.eval import runner


@pytest.fixture
def s(tmp_path, monkeypatch):
    return setup_env(tmp_path, n=10, monkeypatch=monkeypatch)


def test_layout_and_complete_file_skips_inference(s, capsys):
    assert runner.cli_main(run_args(s)) == 0
    out = s["work"] / "Scripted_IVCP"
    for suffix in (".csv", ".xlsx", "_result.csv", "_score.json", "_score.csv", "_efficiency.json"):
        assert (out / f"Scripted_IVCP_POPE{suffix}").is_file(), suffix
    assert not (out / ".parts").exists() and not (out / "Scripted_IVCP_POPE.lock").exists()
    df = predictions(s["work"])
    assert list(df["index"]) == [str(i) for i in range(10)]
    assert "image" not in df.columns and set(df["prediction"]) <= {"Yes", "No"}
    assert len(calls(s)) == 10
    eff = json.loads((out / "Scripted_IVCP_POPE_efficiency.json").read_text())
    assert eff["kept_fraction"] == pytest.approx(0.5, abs=0.05) and eff["rows_timed"] == 8 and eff["sessions"] == 1
    score = json.loads((out / "Scripted_IVCP_POPE_score.json").read_text())
    assert score["efficiency"]["kept_fraction"] == eff["kept_fraction"]  # the score file carries the summary too
    printed = capsys.readouterr().out
    assert "POPE" in printed and "kept" in printed
    assert runner.cli_main(run_args(s)) == 0  # a complete predictions file: no generate call, scored again
    assert len(calls(s)) == 10


def test_unpruned_name_and_retention_suffix(s):
    assert runner.cli_main(run_args(s, "--retention", "0.25", "--layer", "3", "--limit", "2")) == 0
    assert (s["work"] / "Scripted_IVCP_r0.25_k3" / "Scripted_IVCP_r0.25_k3_POPE_limit2.csv").is_file()
    assert runner.cli_main(run_args(s, "--limit", "2", model="Scripted")) == 0
    eff = json.loads((s["work"] / "Scripted" / "Scripted_POPE_limit2_efficiency.json").read_text())
    assert eff["kept_fraction"] == 1.0 and eff["pruned"] is False


def test_limit_outputs_are_isolated(s):
    assert runner.cli_main(run_args(s, "--limit", "4")) == 0
    out = s["work"] / "Scripted_IVCP"
    assert (out / "Scripted_IVCP_POPE_limit4.csv").is_file()
    assert not (out / "Scripted_IVCP_POPE.csv").exists()
    assert len(predictions(s["work"], stem="POPE_limit4")) == 4
    assert runner.cli_main(run_args(s)) == 0  # the full run never reuses the limited rows
    assert len(calls(s)) == 4 + 10
    assert len(predictions(s["work"], stem="POPE_limit4")) == 4


def test_generate_exception_is_a_recorded_miss_and_retried(s, monkeypatch):
    monkeypatch.setenv("IVCP_SCRIPTED_FAIL", "number 3?")
    assert runner.cli_main(run_args(s, "--max-failed-rows", "0.1")) == 0  # 1 of 10 failed: within 10 %
    df = predictions(s["work"])
    assert "scripted failure" in df.loc[df["index"] == "3", "ivcp_error"].item()
    assert (df["ivcp_error"] != "").sum() == 1
    monkeypatch.delenv("IVCP_SCRIPTED_FAIL")
    before = len(calls(s))
    assert runner.cli_main(run_args(s)) == 0
    assert calls(s)[before:] == ["Is there an object number 3? Please answer yes or no."]
    assert (predictions(s["work"])["ivcp_error"] == "").all()


def test_fingerprint_mismatch_refuses_without_reuse(s, capsys):
    assert runner.cli_main(run_args(s, "--limit", "3")) == 0
    assert runner.cli_main(run_args(s, "--limit", "3", "--set", "generation.max_new_tokens=7")) == 1
    err = capsys.readouterr().err
    assert "fingerprint" in err and "--reuse" in err and "Scripted_IVCP_POPE_limit3.csv" in err
    assert runner.cli_main(run_args(s, "--limit", "3", "--set", "generation.max_new_tokens=7", "--reuse")) == 0
    assert len(calls(s)) == 3


def test_lock_held_refuses_and_dead_lock_is_taken_over(s, capsys):
    out = s["work"] / "Scripted_IVCP"
    out.mkdir(parents=True)
    lock = out / "Scripted_IVCP_POPE_limit2.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(f"{holder.pid} {os.uname().nodename}\n")
        assert runner.cli_main(run_args(s, "--limit", "2")) == 1
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert runner.cli_main(run_args(s, "--limit", "2")) == 0  # holder is dead: taken over
    assert not lock.exists()


def test_model_load_failure_logs_and_next_model_runs(s, capsys):
    args = run_args(s, "--limit", "2")
    args[args.index("Scripted_IVCP")] = "Broken_IVCP"
    args.insert(args.index("Broken_IVCP") + 1, "Scripted_IVCP")
    assert runner.cli_main(args) == 1
    log = s["work"] / "Broken_IVCP" / "Broken_IVCP_POPE_limit2_error.log"
    assert "Traceback" in log.read_text() and "no_such_module" in log.read_text()
    assert (s["work"] / "Scripted_IVCP" / "Scripted_IVCP_POPE_limit2.csv").is_file()


def test_usage_errors(s, capsys):
    assert runner.cli_main(run_args(s, model="Scripted_IVPC")) == 2
    assert "Scripted_IVCP" in capsys.readouterr().err
    assert runner.cli_main(run_args(s, data="POPEE")) == 2
    assert "POPE" in capsys.readouterr().err
    assert runner.cli_main(run_args(s, "--limit", "0")) == 2
    assert runner.cli_main(run_args(s, "--retention", "0.3", model="Scripted")) == 2


def test_kill9_then_rerun_calls_generate_once_per_remaining_row(s):
    env = dict(s["env"], IVCP_SCRIPTED_SLEEP="0.25")
    proc = subprocess.Popen([sys.executable, "-m", "ivcprune", "run", *run_args(s)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = s["work"] / "Scripted_IVCP" / ".parts" / "Scripted_IVCP_POPE.r0.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = part.read_text().count("\n")
    assert 3 <= done < 10
    with open(part, "a") as fh:  # a torn last write must be dropped, not crash the resume
        fh.write('{"index": 9, "predic')
    before = len(calls(s))
    assert runner.cli_main(run_args(s)) == 0  # the dead holder's lock is taken over
    assert len(calls(s)) - before == 10 - done
    assert len(set(calls(s)[before:])) == 10 - done
    assert list(predictions(s["work"])["index"]) == [str(i) for i in range(10)]


def test_ctrl_c_exits_130(s):
    env = dict(s["env"], IVCP_SCRIPTED_SLEEP="0.25")
    proc = subprocess.Popen([sys.executable, "-m", "ivcprune", "run", *run_args(s)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    part = s["work"] / "Scripted_IVCP" / ".parts" / "Scripted_IVCP_POPE.r0.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "resume" in err
    assert not (s["work"] / "Scripted_IVCP" / "Scripted_IVCP_POPE.lock").exists()


def test_cli_module_entry_point(s):
    res = cli(run_args(s, "--limit", "2", "--mode", "infer"), s["env"])
    assert res.returncode == 0, res.stderr
    out = s["work"] / "Scripted_IVCP"
    assert (out / "Scripted_IVCP_POPE_limit2.csv").is_file() and not (out / "Scripted_IVCP_POPE_limit2_score.json").exists()
    res = cli(run_args(s, "--limit", "2", "--mode", "eval"), s["env"])
    assert res.returncode == 0, res.stderr
    assert (out / "Scripted_IVCP_POPE_limit2_score.json").is_file()


def test_corrupt_image_rows_are_counted_misses_and_the_rest_runs(s):
    """Corrupt base64 in one row and a reference to a missing index in another: no model call for them."""
    import pandas as pd

    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "4", "image"] = "!!!not-base64!!!" * 8
    df.loc[df["index"] == "7", "image"] = "99"  # references an index that does not exist
    df.to_csv(tsv, sep="\t", index=False)
    assert runner.cli_main(run_args(s, "--max-failed-rows", "0.2")) == 0  # 2 of 10 failed: within 20 %
    assert len(calls(s)) == 8 and not any("number 4?" in c or "number 7?" in c for c in calls(s))
    preds = predictions(s["work"])
    errors = dict(zip(preds["index"], preds["ivcp_error"]))
    assert errors["4"].startswith("bad image") and errors["7"].startswith("bad image")
    score = json.loads((s["work"] / "Scripted_IVCP" / "Scripted_IVCP_POPE_score.json").read_text())
    assert score["n_infer_errors"] == 2 and {e["index"] for e in score["errors"]} == {4, 7}


def test_empty_dataset_fails_the_pair_without_a_score(s, capsys):
    (s["data"] / "POPE.tsv").write_text("index\timage\tquestion\tanswer\tcategory\n")
    assert runner.cli_main(run_args(s)) == 1
    assert "no rows" in capsys.readouterr().err
    assert not (s["work"] / "Scripted_IVCP" / "Scripted_IVCP_POPE_score.json").exists()
