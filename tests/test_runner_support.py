"""Shared set-up for the runner tests: a small POPE-style TSV and a registry file for the scripted model."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ivcprune.testing import make_image

REPO = Path(__file__).resolve().parents[1]

SCRIPTED_YAML = """\
family: qwen2_5_vl
models:
  Scripted_IVCP:
    loader: ivcprune.eval.wrappers.scripted:load
    checkpoint: scripted
    pruning: {method: ivcp, layer: 2, retention: 0.5}
  Broken_IVCP:
    loader: ivcprune.eval.wrappers.no_such_module:load
    checkpoint: nowhere
    pruning: {method: ivcp, layer: 2, retention: 0.5}
"""


def write_pope(root: Path, n: int = 10) -> Path:
    """POPE.tsv with ``n`` rows; every question is unique ("... number {i}?") so calls can be told apart."""
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    make_image(64, 48, seed=1).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    rows = [{"index": i, "image": b64 if i == 0 else "0", "question": f"Is there an object number {i}?",
             "answer": "Yes" if i % 2 else "No", "category": "random"} for i in range(n)]
    path = root / "POPE.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def setup_env(tmp: Path, n: int = 10, monkeypatch=None) -> dict:
    """LMUData with POPE.tsv, the scripted registry file and a call log; returns paths and a ready env."""
    data = tmp / "LMUData"
    write_pope(data, n)
    cfg = tmp / "scripted.yaml"
    cfg.write_text(SCRIPTED_YAML)
    log = tmp / "calls.log"
    env = dict(os.environ, LMUData=str(data), IVCP_SCRIPTED_LOG=str(log), PYTHONPATH=str(REPO))
    env.pop("IVCP_SCRIPTED_FAIL", None)
    env.pop("IVCP_SCRIPTED_SLEEP", None)
    if monkeypatch is not None:
        for k in ("LMUData", "IVCP_SCRIPTED_LOG"):
            monkeypatch.setenv(k, env[k])
        monkeypatch.delenv("IVCP_SCRIPTED_FAIL", raising=False)
        monkeypatch.delenv("IVCP_SCRIPTED_SLEEP", raising=False)
    return {"data": data, "cfg": cfg, "log": log, "env": env, "work": tmp / "outputs"}


def run_args(s: dict, *extra: str, model: str = "Scripted_IVCP", data: str = "POPE", work=None) -> list[str]:
    return ["--data", data, "--model", model, "--model-config", str(s["cfg"]), "--work-dir",
            str(work or s["work"]), *extra]


def calls(s: dict) -> list[str]:
    log = Path(s["log"])
    return log.read_text().splitlines() if log.exists() else []


def predictions(work: Path, model: str = "Scripted_IVCP", stem: str = "POPE") -> pd.DataFrame:
    return pd.read_csv(Path(work) / model / f"{model}_{stem}.csv", dtype=str, keep_default_na=False)


def cli(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ivcprune", "run", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, **kw)


def cli_in_process(args: list[str], env: dict, monkeypatch, capsys) -> tuple[int, str]:
    """``ivcp run`` through the same entry point in this interpreter: (exit code, stderr). For checks that end
    before anything loads, where a fresh interpreter per case would only add its start-up time."""
    from ivcprune.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = main(["run", *args])
    except SystemExit as stop:  # argparse usage errors
        code = stop.code
    return int(code or 0), capsys.readouterr().err
