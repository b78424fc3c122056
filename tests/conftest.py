"""Shared pytest fixtures."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory):
    """Tiny checkpoints go to a per-session temp dir, never the user's ~/.cache (IVCP_TINY_CACHE)."""
    old = os.environ.get("IVCP_TINY_CACHE")
    os.environ["IVCP_TINY_CACHE"] = str(tmp_path_factory.mktemp("ivcp_tiny"))
    yield os.environ["IVCP_TINY_CACHE"]
    if old is None:
        os.environ.pop("IVCP_TINY_CACHE", None)
    else:
        os.environ["IVCP_TINY_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """Under pytest-xdist each worker takes one core: torch's intra-op pool is set to one thread (tests that compare
    thread counts set their own)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture
def api():
    """The judge tests' scripted chat-completions server on 127.0.0.1 (test_judge.FakeAPI)."""
    from test_judge import FakeAPI

    srv = FakeAPI()
    yield srv
    srv.close()


@pytest.fixture
def env(monkeypatch, api):
    """For the judge tests: key set, base pointing at the fake server, tiny backoff, no proxies."""
    from test_judge import KEY

    from ivcprune.eval import judge as judge_mod

    for var in ("OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_BASE", api.url + "/v1")
    monkeypatch.setattr(judge_mod, "BACKOFF_BASE", 0.01)
    return monkeypatch
