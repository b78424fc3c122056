"""The embedded default and the test_ivcp_*.sh scripts (docs/HARNESS.md §11)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_runner_support import REPO, predictions, setup_env

from ivcprune.tools import demo

SCRIPTS = REPO / "scripts"


def _script_env(tmp_path: Path, **extra) -> dict:
    """A clean environment for the scripts: HOME without LMUData, no *_PATH variables, no GPUs."""
    env = {k: v for k, v in os.environ.items() if k != "LMUData" and not k.endswith("_PATH")}
    env.update(HOME=str(tmp_path / "home"), CUDA_VISIBLE_DEVICES="", WORK_DIR=str(tmp_path / "outputs"),
               OMP_NUM_THREADS="1", **extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def test_nothing_configured_detection(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    assert demo.nothing_configured({})
    assert not demo.nothing_configured({"LMUData": "/x"})
    assert not demo.nothing_configured({"QWEN25VL_7B_PATH": "/w"})
    (tmp_path / "LMUData").mkdir()
    assert not demo.nothing_configured({})


def test_qwen_grounding_script_runs_the_embedded_demo(tmp_path):
    """Nothing configured: the script runs `ivcp demo` on the shipped pocket model through the real runner."""
    env = _script_env(tmp_path)
    res = subprocess.run(["bash", str(SCRIPTS / "test_ivcp_qwen_grounding.sh"), "--rows", "12", "--seed", "5"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "POCKET MODEL" in out and "Qwen2_5_VLForConditionalGeneration" in out and "chance" in out
    assert "LMUData" in out and "--model-path" in out and "QWEN25VL_7B_PATH" in out
    work = tmp_path / "outputs"
    summary = json.loads((work / "demo_summary.json").read_text())
    assert (summary["rows"], summary["seed"], summary["retention"], summary["layer"]) == (12, 5, 0.5, demo.DEMO_LAYER)
    assert list(summary["methods"]) == list(demo.METHODS)
    for key, m in summary["methods"].items():
        assert set(m) == {"acc@0.5", "ci95", "mean_iou", "kept_fraction", "prefill_ms"}
        assert m["ci95"][0] <= m["acc@0.5"] <= m["ci95"][1] and m["prefill_ms"] > 0
        assert key in out
        expected = {"unpruned": 1.0, "ivc_removed": 0.8}.get(key, 0.5)  # 10 % + 10 % IVC removed, else 50 %
        assert abs(m["kept_fraction"] - expected) < 0.02, (key, m)
    name = "Qwen2.5-VL-7B-Instruct_Grounding_IVCP_r0.5_k3"
    score = json.loads((work / name / f"{name}_RefCOCO_testA_for_qwen25vl_score.json").read_text())
    assert score["number"] == 12 and score["frame_mismatches"] == 0 and score["parse_failures"] <= 1
    eff = json.loads((work / name / f"{name}_RefCOCO_testA_for_qwen25vl_efficiency.json").read_text())
    assert eff["batch_size"] == demo.DEMO_BATCH_SIZE  # the demo batches by default (same predictions as batch 1)


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n():
    wide = demo.bootstrap_ci([1, 0] * 10)
    narrow = demo.bootstrap_ci([1, 0] * 200)
    assert wide[0] < 0.5 < wide[1] and narrow[0] < 0.5 < narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3  # width ~ 1/sqrt(n): sqrt(20) ~ 4.5
    assert demo.bootstrap_ci([1.0] * 7) == (1.0, 1.0)


def test_script_matrix_continues_after_a_failing_pair(tmp_path):
    s = setup_env(tmp_path, n=4)
    env = _script_env(tmp_path, LMUData=str(s["data"]), IVCP_SCRIPTED_LOG=str(s["log"]),
                      MODELS="Broken_IVCP Scripted_IVCP", DATASETS="POPE", BASELINE="1")
    res = subprocess.run(["bash", str(SCRIPTS / "test_ivcp_qwen_generalvqa.sh"), "--model-config", str(s["cfg"]),
                          "--limit", "2"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0  # Broken_IVCP and its unpruned entry fail ...
    assert "3 of 4 pair(s) succeeded" not in res.stdout
    assert "2 of 4 pair(s) succeeded" in res.stdout, res.stdout + res.stderr
    for model in ("Scripted_IVCP", "Scripted"):  # ... the scripted pairs still ran
        assert len(predictions(tmp_path / "outputs", model=model, stem="POPE_limit2")) == 2


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("test_ivcp_*.sh")))
def test_scripts_parse_and_name_registered_models(script):
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)]).returncode == 0
    from ivcprune.eval.registry import load_registry

    text = (SCRIPTS / script).read_text()
    models = text.split("ivcp_run_matrix \"", 1)[1].split("\"", 1)[0].split()
    names = load_registry()
    assert models and all(m in names for m in models)


def test_demo_mode_passes_batch_size_on(tmp_path):
    """BATCH_SIZE reaches `ivcp demo` as it reaches the runner in the matrix (a recording interpreter stands in)."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/usr/bin/env bash\necho \"$@\" > {tmp_path / 'args'}\n")
    fake.chmod(0o755)
    for extra, expected in (({}, "-m ivcprune demo --rows 3"),
                            ({"BATCH_SIZE": "4"}, "-m ivcprune demo --batch-size 4 --rows 3")):
        env = _script_env(tmp_path, PYTHON=str(fake), **extra)
        res = subprocess.run(["bash", str(SCRIPTS / "test_ivcp_qwen_grounding.sh"), "--rows", "3"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "args").read_text().strip() == expected


def test_demo_refuses_a_batch_size_below_1_before_drawing(tmp_path):
    with pytest.raises(SystemExit) as err:
        demo.cli_main(["--batch-size", "0", "--work-dir", str(tmp_path / "w")])
    assert err.value.code == 2 and not (tmp_path / "w").exists()
