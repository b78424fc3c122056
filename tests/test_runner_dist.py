"""torchrun with 2 gloo processes on CPU: sharded rows merge to the single-process result, then resume at WS 1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_runner_support import REPO, calls, cli, predictions, run_args, setup_env

from ivcprune.eval import runner

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def _torchrun(args, env, **kw):
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "ivcprune", "run", *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _kill(proc):
    """SIGKILL both ranks, then torchrun (torchrun starts each worker in a session of its own)."""
    for pid in _children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)


def test_two_ranks_merge_equals_single_process(tmp_path, monkeypatch):
    s = setup_env(tmp_path, n=10, monkeypatch=monkeypatch)
    env = dict(s["env"], OMP_NUM_THREADS="1")
    proc = _torchrun(run_args(s, "--dist-timeout", "60"), env)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        _kill(proc)
    assert proc.returncode == 0, out
    assert len(calls(s)) == 10 and len(set(calls(s))) == 10  # every row exactly once across both ranks
    assert not (s["work"] / "Scripted_IVCP" / ".parts").exists()
    single = tmp_path / "single"
    assert runner.cli_main(run_args(s, work=single)) == 0
    a, b = predictions(s["work"]), predictions(single)
    cols = ["index", "question", "answer", "prediction", "ivcp_error", "ivcp_fp", "ivcp_kept_tokens"]
    assert a[cols].equals(b[cols])
    assert (s["work"] / "Scripted_IVCP" / "Scripted_IVCP_POPE_score.json").read_text().split('"judge"')[0] == \
        (single / "Scripted_IVCP" / "Scripted_IVCP_POPE_score.json").read_text().split('"judge"')[0]


def test_killed_two_rank_run_resumes_at_world_size_one(tmp_path, monkeypatch):
    s = setup_env(tmp_path, n=12, monkeypatch=monkeypatch)
    env = dict(s["env"], OMP_NUM_THREADS="1", IVCP_SCRIPTED_SLEEP="0.3")
    proc = _torchrun(run_args(s), env)
    parts = s["work"] / "Scripted_IVCP" / ".parts"
    r0, r1 = parts / "Scripted_IVCP_POPE.r0.jsonl", parts / "Scripted_IVCP_POPE.r1.jsonl"

    def lines(p):
        return p.read_text().count("\n") if p.exists() else 0

    deadline = time.time() + 90
    while time.time() < deadline and (lines(r0) < 2 or lines(r1) < 2):
        time.sleep(0.05)
    _kill(proc)
    done = lines(r0) + lines(r1)
    assert 4 <= done < 12
    before = len(calls(s))
    res = cli(run_args(s), dict(s["env"]))  # world size 1
    assert res.returncode == 0, res.stderr
    assert len(calls(s)) - before == 12 - done
    merged = predictions(s["work"])
    assert list(merged["index"]) == [str(i) for i in range(12)] and (merged["ivcp_error"] == "").all()
    single = tmp_path / "single"
    assert runner.cli_main(run_args(s, work=single)) == 0
    assert merged["prediction"].equals(predictions(single)["prediction"])
