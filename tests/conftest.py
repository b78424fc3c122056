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
