"""load_processor: the no-torchvision fallback for local folders and for hub ids (through the HF cache).

The stock AutoProcessor call and the hub snapshot are both replaced here: these tests never touch the network.
"""

from __future__ import annotations

import pytest
import transformers

from ivcprune.models import processor_loading
from ivcprune.testing import tiny_checkpoint


@pytest.fixture
def no_stock_processor(monkeypatch):
    """As on a CPU install: the stock path fails because the video processor needs torchvision."""

    def fail(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fail)


def test_hub_id_resolves_to_the_cached_snapshot(monkeypatch, no_stock_processor):
    folder = tiny_checkpoint("qwen2_5_vl")
    asked = {}

    def fake_snapshot(repo_id, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, revision=revision, patterns=allow_patterns)
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    proc = processor_loading.load_processor("Qwen/Qwen2.5-VL-7B-Instruct")
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert asked["repo_id"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert not any(p.endswith(".safetensors") for p in asked["patterns"])  # never the weights


def test_unreachable_hub_id_raises_the_stock_error(monkeypatch, no_stock_processor):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ImportError, match="Torchvision"):
        processor_loading.load_processor("no-such-org/no-such-model")
