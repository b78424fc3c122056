"""Issue 10: every judge failure class is counted and summarised, and a judge that failed for every item fails the
pair; against a real chat-completions server on 127.0.0.1 (the FakeAPI of test_judge)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openai")

from test_judge import KEY, OPTS, mk  # noqa: E402
from test_no_silent_results import write_mmstar  # noqa: E402
from test_runner_support import calls, cli, cli_in_process, run_args, setup_env  # noqa: E402

HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
EMPTY_CHOICES = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})


def test_every_failure_class_is_counted_with_its_first_example(env, api, tmp_path):
    api.script = [{"raw": HTML}, {"raw": "{not json"}, {"raw": EMPTY_CHOICES},   # item 1: three malformed replies
                  {"content": "F"}, {"content": "F"}, {"content": "perhaps"},      # item 2: not an option, unparseable
                  {"status": 500}, {"status": 500}]                                 # item 3: 5xx after 1 retry
    j = mk(tmp_path, args={"retry": 1}, nproc=1)
    item = ("What is the main object?", OPTS, "something")
    assert j.mcq_many([item, (item[0], OPTS, "else"), (item[0], OPTS, "third")]) == [None, None, None]
    fails = j.report()["failures"]
    assert {k: v["count"] for k, v in fails.items()} == {
        "HTML body": 1, "reply not JSON": 1, "empty choices": 1, "not an option": 2, "unparseable reply": 1,
        "HTTP 500 after 1 retries": 1}
    assert fails["HTML body"]["first"].startswith("<html>") and fails["not an option"]["first"] == "F"
    line = j.summary_line()
    assert line.startswith("judge gpt-4o on MMStar: 3 item(s) sent, 0 judged, 3 not judged; failures: ")
    assert "HTML body x1 (first: '<html><body>" in line and "not an option x2 (first: 'F')" in line
    assert j.failed_every_item() and KEY not in line


def test_a_judge_that_answers_some_items_has_not_failed_every_item(env, api, tmp_path):
    api.script = [{"raw": HTML}, {"content": "A"}]
    j = mk(tmp_path, nproc=1)
    assert j.mcq_many([("q?", OPTS, "x")]) == ["A"]
    assert not j.failed_every_item() and "HTML body x1" in j.summary_line()


def test_no_key_sends_nothing_and_prints_no_judge_line(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    j = mk(tmp_path)
    assert j.mcq_many([("q?", OPTS, "x")]) == [None]
    assert j.summary_line() is None and not j.failed_every_item()


def _mmstar_env(tmp_path, monkeypatch, api, reply: str):
    s = setup_env(tmp_path, n=2, monkeypatch=monkeypatch)
    write_mmstar(s["data"], ["A", "B", "C"])
    env = dict(s["env"], OPENAI_API_KEY=KEY, OPENAI_API_BASE=api.url + "/v1", IVCP_SCRIPTED_REPLY=reply,
               OMP_NUM_THREADS="1")
    for var in ("OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(var, None)
    return s, env


def test_cli_judge_failing_every_item_exits_1_with_one_summary_line(tmp_path, monkeypatch, api):
    s, env = _mmstar_env(tmp_path, monkeypatch, api, reply="something furry")  # no rule resolves it
    api.default = {"raw": HTML}
    res = cli(run_args(s, "--judge-args", '{"retry": 0}', data="MMStar"), env)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("judge gpt-4o on MMStar: 3 item(s) sent, 0 judged, 3 not judged; failures: HTML body x9 "
                            "(first: '<html>") == 2  # the summary line, repeated in the FAILED message
    assert "judging was requested but failed for every item sent (3)" in res.stderr
    score = json.loads((s["work"] / "Scripted_IVCP" / "Scripted_IVCP_MMStar_score.json").read_text())
    assert score["judge"]["failures"]["HTML body"]["count"] == 9 and score["judge"]["n_judge_errors"] == 3
    api.default = {"content": "A"}  # the judge works again: failures were never cached, the rerun judges
    res = cli(run_args(s, "--judge-args", '{"retry": 0}', data="MMStar"), env)
    assert res.returncode == 0, res.stderr
    assert "3 item(s) sent, 3 judged, 0 not judged" in res.stderr


def test_cli_auth_error_on_every_item_fails_the_pair(tmp_path, monkeypatch, api):
    s, env = _mmstar_env(tmp_path, monkeypatch, api, reply="something furry")
    api.default = {"status": 401, "message": "bad key"}
    res = cli(run_args(s, "--api-nproc", "1", data="MMStar"), env)
    assert res.returncode == 1 and "HTTP 401 x1 (first: 'Error code: 401 - bad key')" in res.stderr
    assert "judge stopped after HTTP 401" in res.stderr and len(api.requests) == 1
    assert "judging was requested but failed for every item sent" in res.stderr


def test_cli_bad_judge_args_exit_2_before_any_inference(tmp_path, monkeypatch, capsys, api):
    s, env = _mmstar_env(tmp_path, monkeypatch, api, reply="A")
    res = cli(run_args(s, "--judge-args", "{oops", data="MMStar"), env)  # one real subprocess: the CLI's exit code
    assert res.returncode == 2 and "not valid JSON" in res.stderr, res.stderr
    for bad, msg in [('{"max_token": 16}', "unknown --judge-args key(s) ['max_token']"),
                     ('{"api_base": "localhost:8000"}', "api_base must be an http(s) URL"),
                     ('{"max_tokens": 0}', "max_tokens must be an integer in [1,"),
                     ("{oops", "not valid JSON")]:
        code, err = cli_in_process(run_args(s, "--judge-args", bad, data="MMStar"), env, monkeypatch, capsys)
        assert code == 2 and msg in err, (bad, err)
    assert calls(s) == [] and api.requests == []
