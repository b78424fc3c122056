"""Build, save and cache tiny random checkpoints that load exactly like real ones.

``make_tiny_checkpoint`` writes model + processor + generation config to a folder;
``tiny_checkpoint`` memoises that folder under ``$IVCP_TINY_CACHE`` keyed by the settings and
``FACTORY_VERSION`` (bump it whenever a builder's output changes), building in a temp dir and
renaming so concurrent builders never see a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from ivcprune.models.processor_loading import save_processor

FACTORY_VERSION = 3
TINY_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "internvl")

_COMMON = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "seed": 0, "init_gain": 1.0}


def _family_module(family: str):
    if family in ("qwen2_5_vl", "qwen2_vl"):
        from . import qwen as mod
    elif family in ("qwen3_vl", "qwen3_vl_moe"):
        from . import qwen3 as mod
    elif family == "llava":
        from . import llava as mod
    elif family == "internvl":
        from . import internvl as mod
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    return mod


def settings(family: str, **overrides) -> dict:
    """Full settings for a family: common defaults, then family defaults, then overrides."""
    mod = _family_module(family)
    s = dict(_COMMON)
    s.update(mod.DEFAULTS)
    unknown = set(overrides) - set(s)
    if unknown:
        raise TypeError(f"unknown override(s) for {family}: {sorted(unknown)}; known: {sorted(s)}")
    s.update(overrides)
    return s


def _reinit(model, gain: float) -> None:
    """Fan-in scaled Gaussian init so activations stay O(1) and logits are far from uniform.

    The stock 0.02 std gives near-uniform logits and near-zero value vectors in a 64-wide model.
    Norm weights keep their default of 1; biases get a small non-zero spread.
    """
    import torch

    for name, p in model.named_parameters():
        if p.dim() >= 2:
            is_embedding = "embed_tokens" in name or ("embedding" in name and "patch" not in name)
            if is_embedding:  # token / position tables and CLS vectors: unit scale like a trained table
                std = gain
            else:
                std = gain / math.sqrt(p[0].numel())
            torch.nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            torch.nn.init.normal_(p, 0.0, 0.1)


def make_tiny_checkpoint(family: str, folder, layers: int = 4, seed: int = 0, **overrides) -> Path:
    """Build a seeded tiny checkpoint for ``family`` and save it (float32) to ``folder``."""
    import torch
    from transformers import GenerationConfig

    s = settings(family, layers=layers, seed=seed, **overrides)
    mod = _family_module(family)
    torch.manual_seed(s["seed"])
    model, processor, gen, info = mod.build(family, s)
    model = model.float()
    with torch.no_grad():
        _reinit(model, s["init_gain"])
    model.eval()
    model.generation_config = GenerationConfig(**gen, do_sample=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_processor(processor, folder, info.pop("video_config", None))
    record = {"family": family, "settings": s, "factory_version": FACTORY_VERSION, **info}
    (folder / "ivcp_tiny.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return folder


def _cache_root() -> Path:
    root = os.environ.get("IVCP_TINY_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ivcprune" / "tiny"


def tiny_checkpoint(family: str, **overrides) -> Path:
    """Cached ``make_tiny_checkpoint``: returns ``$IVCP_TINY_CACHE/<family>-<hash>``, building once."""
    s = settings(family, **overrides)
    key = json.dumps({"v": FACTORY_VERSION, "family": family, "s": s}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = _cache_root()
    final = root / f"{family}-{digest}"
    if (final / "ivcp_tiny.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-{digest}-", dir=root))
    try:
        make_tiny_checkpoint(family, tmp, **s)
        try:
            os.rename(tmp, final)
        except OSError:
            # another process won the race (final exists, non-empty): keep theirs
            if not (final / "ivcp_tiny.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_record(folder) -> dict:
    """The factory's record (family, settings, image processor class, token ids) for a checkpoint."""
    return json.loads((Path(folder) / "ivcp_tiny.json").read_text())
