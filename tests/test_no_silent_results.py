"""Issue 10: a run that cannot be trusted says so, exits non-zero and writes no score; no input is quietly lost.

Real TSV files, real ``ivcp run`` subprocesses (the scripted model, or tiny random checkpoints where the check
needs a real model), a real chat-completions server on 127.0.0.1 for the judge.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_runner_support import REPO, calls, cli, cli_in_process, predictions, run_args, setup_env

SCORE = "Scripted_IVCP_POPE_score.json"


@pytest.fixture
def s(tmp_path, monkeypatch):
    monkeypatch.delenv("IVCP_SCRIPTED_REPLY", raising=False)
    env = setup_env(tmp_path, n=10, monkeypatch=monkeypatch)
    env["env"].pop("IVCP_SCRIPTED_REPLY", None)
    env["env"]["OMP_NUM_THREADS"] = "1"
    return env


def out_dir(s, model="Scripted_IVCP") -> Path:
    return s["work"] / model


def png_b64(w=64, h=48, noise=False) -> str:
    img = Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)) if noise else Image.new("RGB", (w, h), "red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_mmstar(root: Path, answers: list[str]) -> Path:
    img = png_b64()
    rows = [{"index": i, "image": img if i == 0 else "0", "question": f"Which shape is number {i}?", "A": "circle",
             "B": "square", "C": "triangle", "D": "star", "answer": a, "category": "c", "l2-category": "l2"}
            for i, a in enumerate(answers)]
    path = root / "MMStar.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


# --------------------------------------------------------------------------------------------- failed rows
def test_every_row_failed_exits_1_with_distinct_errors_and_no_score(s):
    env = dict(s["env"], IVCP_SCRIPTED_FAIL="Is there")
    res = cli(run_args(s), env)
    assert res.returncode == 1, res.stderr
    assert "every row failed" in res.stderr and "10 x RuntimeError: scripted failure on 'Is there'" in res.stderr
    assert not (out_dir(s) / SCORE).exists()
    # the failed rows never block the corrected rerun, even under other settings
    res = cli(run_args(s, "--set", "generation.max_new_tokens=64"), s["env"])
    assert res.returncode == 0, res.stderr
    assert (out_dir(s) / SCORE).is_file() and (predictions(s["work"])["ivcp_error"] == "").all()


def test_more_failed_rows_than_the_threshold_fail_and_old_scores_go(s):
    assert cli(run_args(s), s["env"]).returncode == 0
    assert (out_dir(s) / SCORE).is_file()
    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "5", "question"] = "Is there an object number five?"  # edited: re-run, and fails
    df.to_csv(tsv, sep="\t", index=False)
    env = dict(s["env"], IVCP_SCRIPTED_FAIL="number five")
    res = cli(run_args(s), env)
    assert res.returncode == 1
    assert "1 of 10 rows failed (10%, more than the 5% allowed by --max-failed-rows)" in res.stderr
    assert "Removed the earlier score files" in res.stderr and not (out_dir(s) / SCORE).exists()
    res = cli(run_args(s, "--max-failed-rows", "0.1"), env)  # within the threshold: scored, the miss counted
    assert res.returncode == 0, res.stderr
    assert json.loads((out_dir(s) / SCORE).read_text())["n_infer_errors"] == 1


def test_all_predictions_empty_fails(s):
    res = cli(run_args(s, "--limit", "3"), dict(s["env"], IVCP_SCRIPTED_REPLY=""))
    assert res.returncode == 1 and "all 3 predictions are empty" in res.stderr
    assert not (out_dir(s) / "Scripted_IVCP_POPE_limit3_score.json").exists()


def test_scripts_report_a_failed_pair(s, tmp_path):
    env = dict(s["env"], MODELS="Scripted_IVCP", DATASETS="POPE", WORK_DIR=str(s["work"]), IVCP_SCRIPTED_FAIL="Is there",
               PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(["bash", str(REPO / "scripts" / "test_ivcp_qwen_generalvqa.sh"), "--model-config",
                          str(s["cfg"]), "--limit", "2"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert "every row failed" in res.stderr
    assert "[ivcp] FAILED (exit 1): Scripted_IVCP x POPE" in res.stdout
    assert "failed pairs (no trustworthy score" in res.stdout and "Scripted_IVCP x POPE (exit 1)" in res.stdout


# --------------------------------------------------------------------------------------------- preflight
def test_usage_errors_before_anything_loads(s, monkeypatch, capsys):
    """One case through a real subprocess (the CLI's exit code), the others in-process through the same entry point."""
    res = cli(run_args(s, "--set", "generation.max_new_tokens=0"), s["env"])
    assert res.returncode == 2 and "max_new_tokens must be an integer >= 1" in res.stderr, res.stderr
    for extra, msg in [(["--set", "generation.max_new_tokens=0"], "max_new_tokens must be an integer >= 1"),
                       (["--set", "generation.temperature=0.7"], "generation.temperature is not used"),
                       (["--set", "pruning.retention=1.5"], "pruning.retention must be in (0, 1]"),
                       (["--judge-args", '{"temprature": 0}'], "unknown --judge-args key"),
                       (["--judge-args", '{"timeout": "60"}'], "timeout must be a number"),
                       (["--judge-args", '{"temperature": 3}'], "temperature must be in [0, 2]"),
                       (["--judge-args", '{"retry": -1}'], "retry must be an integer in [0, 20]"),
                       (["--max-failed-rows", "2"], "--max-failed-rows must be a fraction")]:
        code, err = cli_in_process(run_args(s, *extra), s["env"], monkeypatch, capsys)
        assert code == 2, (extra, err)
        assert msg in err, (msg, err)
    assert calls(s) == [] and not s["work"].exists()


def test_mcq_answers_outside_the_options_fail_before_any_row(s):
    write_mmstar(s["data"], ["A", "b", "E", "", "C"])
    res = cli(run_args(s, data="MMStar"), s["env"])
    assert res.returncode == 1
    for part in ("3 answer(s) are not one of the row's option letters", "row 2 (index 1): answer 'b'",
                 "row 3 (index 2): answer 'E'", "row 4 (index 3): answer ''"):
        assert part in res.stderr, res.stderr
    assert calls(s) == []
    assert cli(run_args(s, "--mode", "infer", data="MMStar"), s["env"]).returncode == 0  # answers not needed


def test_yes_no_answers_must_be_exact(s):
    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "4", "answer"] = "yes"
    df.to_csv(tsv, sep="\t", index=False)
    res = cli(run_args(s), s["env"])
    assert res.returncode == 1 and "row 5 (index 4): answer 'yes'" in res.stderr and calls(s) == []


def test_missing_model_path_says_so(s, tmp_path):
    res = cli(run_args(s, "--model-path", str(tmp_path / "no" / "such" / "ckpt")), s["env"])
    assert res.returncode == 1
    assert f"--model-path {tmp_path / 'no' / 'such' / 'ckpt'}: no such folder" in res.stderr


def test_load_failure_prints_the_reason(s):
    args = run_args(s, "--limit", "2")
    args[args.index("Scripted_IVCP")] = "Broken_IVCP"
    res = cli(args, s["env"])
    assert res.returncode == 1
    assert "FAILED: model Broken_IVCP: failed to load: NotSupportedYet:" in res.stderr
    assert "no wrapper ivcprune.eval.wrappers.no_such_module:load" in res.stderr and "_error.log" in res.stderr


# --------------------------------------------------------------------------------------------- real tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ivcprune.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_models")
    qwen, llava = tiny_checkpoint("qwen2_5_vl"), tiny_checkpoint("llava")
    short = root / "qwen_short"  # the same weights with only 48 positions: every image prompt is longer
    shutil.copytree(qwen, short)
    cfg = json.loads((short / "config.json").read_text())
    (cfg.get("text_config") or cfg)["max_position_embeddings"] = 48
    (short / "config.json").write_text(json.dumps(cfg))
    yaml = root / "tiny.yaml"
    yaml.write_text(f"""family: qwen2_5_vl
defaults:
  dtype: float32
  attn: sdpa
  generation: {{max_new_tokens: 4}}
models:
  TinyQwen_IVCP:
    checkpoint: {qwen}
    pruning: {{method: ivcp, layer: 2, retention: 0.5}}
  TinyDeep_IVCP:
    checkpoint: {qwen}
    pruning: {{method: ivcp, layer: 16, retention: 0.5}}
  WrongFamily_IVCP:
    checkpoint: {llava}
    pruning: {{method: ivcp, layer: 2, retention: 0.5}}
  ShortQwen_IVCP:
    checkpoint: {short}
    pruning: {{method: ivcp, layer: 2, retention: 0.5}}
""")
    return yaml


def tiny_run(s, yaml, model, *extra):
    args = ["--data", "POPE", "--model", model, "--model-config", str(yaml), "--work-dir", str(s["work"]),
            "--limit", "3", *extra]
    return cli(args, s["env"], timeout=600)


@pytest.mark.parametrize("model,extra,msg", [
    ("TinyQwen_IVCP", ["--layer", "999"], "layer K=999 is out of range for a model with 4 decoder layers"),
    ("TinyDeep_IVCP", [], "layer K=16 is out of range for a model with 4 decoder layers"),
    ("WrongFamily_IVCP", [], "is a 'llava' model, but the entry's family qwen2_5_vl loads "
                             "Qwen2_5_VLForConditionalGeneration"),
])
def test_model_preflight_fails_the_pair_before_any_row(s, tiny, model, extra, msg):
    res = tiny_run(s, tiny, model, *extra)
    assert res.returncode == 1, res.stderr
    assert msg in res.stderr, res.stderr
    name = model + ("_k999" if extra else "")
    folder = s["work"] / name
    assert not list(folder.glob("*_score.json")) and not list(folder.glob("*.csv"))
    assert all(p.stat().st_size == 0 for p in folder.glob(".parts/*"))  # no row was recorded


def test_prompt_longer_than_the_positions_is_a_named_miss(s, tiny):
    res = tiny_run(s, tiny, "ShortQwen_IVCP")
    assert res.returncode == 1
    assert "every row failed" in res.stderr and "prompt too long" in res.stderr and "48 positions" in res.stderr


def test_nested_prune_is_refused_with_a_clear_message(tiny):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    import ivcprune
    from ivcprune.testing import tiny_checkpoint

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen2_5_vl"), dtype=torch.float32)
    with ivcprune.prune(model, ivcprune.IVCPrune(layer=2)):
        with pytest.raises(NotImplementedError, match="already active on this model"):
            with ivcprune.prune(model, ivcprune.IVCPrune(layer=1)):
                pass
    with ivcprune.prune(model, ivcprune.IVCPrune(layer=1)) as trace:  # the outer block left nothing behind
        assert trace.layer == 1
    assert "_ivcprune_active" not in model.__dict__


# --------------------------------------------------------------------------------------------- TSV through the CLI
def test_merged_rows_fail_the_pair_naming_the_line(s):
    tsv = s["data"] / "POPE.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("Is there an object number 2?", '"Is there an object number 2?')
    lines[8] = lines[8].replace("number 7?", 'number "7"?')
    tsv.write_text("".join(lines))
    res = cli(run_args(s), s["env"])
    assert res.returncode == 1 and "line 4 (index 2), column 'question'" in res.stderr and calls(s) == []


def test_empty_image_cell_is_a_counted_miss_in_the_denominator(s):
    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "6", "image"] = ""
    df.to_csv(tsv, sep="\t", index=False)
    res = cli(run_args(s, "--max-failed-rows", "0.1"), s["env"])
    assert res.returncode == 0, res.stderr
    score = json.loads((out_dir(s) / SCORE).read_text())
    assert score["rows"] == 10 and score["n_infer_errors"] == 1
    assert "empty image cell" in score["errors"][0]["error"] and len(calls(s)) == 9


# --------------------------------------------------------------------------------------------- fingerprint
def test_edited_row_beyond_the_first_mib_is_re_run(s):
    tsv = s["data"] / "POPE.tsv"
    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df["index"] == "0", "image"] = png_b64(700, 700, noise=True)  # > 1 MiB before the rows below
    df.to_csv(tsv, sep="\t", index=False)
    assert tsv.stat().st_size > (1 << 20) * 1.2
    assert cli(run_args(s), s["env"]).returncode == 0
    before = len(calls(s))
    df.loc[df["index"] == "9", "question"] = "Is there an object number 8?"  # same length, same file size
    df.to_csv(tsv, sep="\t", index=False)
    res = cli(run_args(s, "--mode", "eval"), s["env"])  # scoring stale predictions is refused
    assert res.returncode == 1 and "1 row(s) of the TSV changed" in res.stderr
    res = cli(run_args(s), s["env"])
    assert res.returncode == 0, res.stderr
    assert "1 row(s) changed in the TSV" in res.stderr
    assert calls(s)[before:] == ["Is there an object number 8? Please answer yes or no."]
    df.loc[df["index"] == "9", "answer"] = "No" if df.loc[df["index"] == "9", "answer"].item() == "Yes" else "Yes"
    df.to_csv(tsv, sep="\t", index=False)  # the model never saw the answer: re-scored, not re-run
    assert cli(run_args(s), s["env"]).returncode == 0 and len(calls(s)) == before + 1


# --------------------------------------------------------------------------------------------- work dir, disk full
def test_work_dir_that_is_a_file_or_unwritable_is_a_usage_error(s, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = cli(run_args(s, work=blocker), s["env"])
    assert res.returncode == 2 and f"--work-dir {blocker} is a file" in res.stderr and "Traceback" not in res.stderr
    if os.geteuid() == 0:  # root writes through permission bits: use a folder no one can create
        target = Path("/proc/ivcp-no-such/out")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out"
    res = cli(run_args(s, work=target), s["env"])
    assert res.returncode == 2 and f"--work-dir {target} cannot be used" in res.stderr
    assert "Traceback" not in res.stderr


def test_disk_full_aborts_without_temp_files_and_resumes(s):
    """RLIMIT_FSIZE makes every write past 1500 bytes fail (EFBIG), like a full disk."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500)); "
            "from ivcprune.eval.runner import cli_main; sys.exit(cli_main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, *run_args(s)], env=s["env"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "FAILED" in res.stderr
    assert not [p for p in s["work"].rglob("*") if ".tmp" in p.name]
    assert not (out_dir(s) / SCORE).exists()
    done = len(calls(s))
    assert cli(run_args(s), s["env"]).returncode == 0  # rows written before the disk filled are kept
    assert len(calls(s)) >= 10 and len(predictions(s["work"])) == 10 and done < 10


def test_atomic_write_leaves_no_temp_file_when_the_write_fails(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)); from ivcprune.eval import store\n"
            f"try:\n    store.atomic_write_text({str(target)!r}, 'y' * 5000)\nexcept OSError as e:\n    print('EFBIG', e)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "EFBIG" in res.stdout, res.stderr
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_sigterm_mid_run_loses_no_finished_row(s):
    import signal
    import time

    env = dict(s["env"], IVCP_SCRIPTED_SLEEP="0.25")
    proc = subprocess.Popen([sys.executable, "-m", "ivcprune", "run", *run_args(s)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out_dir(s) / ".parts" / "Scripted_IVCP_POPE.r0.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    done = part.read_text().count("\n")
    assert 3 <= done < 10 and not (out_dir(s) / SCORE).exists()
    before = len(calls(s))
    assert cli(run_args(s), s["env"]).returncode == 0  # the dead holder's lock is taken over
    assert len(calls(s)) - before == 10 - done and len(predictions(s["work"])) == 10


def test_a_valid_tiny_model_passes_preflight_and_scores(s, tiny):
    res = tiny_run(s, tiny, "TinyQwen_IVCP")
    assert res.returncode == 0, res.stderr
    assert (s["work"] / "TinyQwen_IVCP" / "TinyQwen_IVCP_POPE_limit3_score.json").is_file()
