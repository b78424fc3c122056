"""Read official DeepSeek-VL2 safetensors into a module built on the meta device, strictly.

transformers 5.23's ``from_pretrained`` only logs missing/unexpected keys, so we load ourselves:
the set of checkpoint keys must equal the set the module expects (after mapping fused expert
tensors to their per-expert names), or loading raises and names the offending keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .language import checkpoint_names, fuse_tensor


class CheckpointMismatchError(KeyError):
    """The checkpoint's keys differ from what the model expects (missing and/or unexpected)."""

    def __init__(self, missing: list[str], unexpected: list[str]):
        self.missing, self.unexpected = missing, unexpected
        super().__init__(
            f"checkpoint does not match the model: {len(missing)} missing {missing[:8]}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}"
        )


def resolve_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id fetched through the normal HF cache (honours HF_HUB_OFFLINE)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))


def shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def read_checkpoint(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of all shards on ``device``, cast to ``dtype``; a key in two shards is an error."""
    tensors: dict[str, torch.Tensor] = {}
    for file in shard_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as fh:
            for key in fh.keys():
                if key in tensors:
                    raise ValueError(f"key {key} appears in more than one shard")
                tensors[key] = fh.get_tensor(key).to(dtype)
    return tensors


def expected_checkpoint_keys(module: nn.Module, num_experts: int) -> dict[str, list[str]]:
    """module state-dict key -> the checkpoint keys that fill it."""
    return {key: checkpoint_names(key, num_experts) for key in module.state_dict()}


def load_strict(module: nn.Module, checkpoint: dict[str, torch.Tensor], num_experts: int) -> None:
    """Assign checkpoint tensors to a meta-built module; raise on any key-set or shape difference."""
    mapping = expected_checkpoint_keys(module, num_experts)
    wanted = {name for names in mapping.values() for name in names}
    missing = sorted(wanted - checkpoint.keys())
    unexpected = sorted(checkpoint.keys() - wanted)
    if missing or unexpected:
        raise CheckpointMismatchError(missing, unexpected)
    state = {key: fuse_tensor(key, checkpoint, num_experts) for key in mapping}
    module.load_state_dict(state, strict=True, assign=True)


def materialise_meta_buffers(module: nn.Module) -> None:
    """Rebuild non-persistent buffers left on the meta device (rotary ``inv_freq``) on the CPU."""
    for name, sub in list(module.named_modules()):
        meta = [b for b, t in sub.named_buffers(recurse=False) if t is not None and t.is_meta]
        if not meta:
            continue
        if not hasattr(sub, "inv_freq"):
            raise RuntimeError(f"buffer(s) {meta} of {name} were not loaded and cannot be rebuilt")
        fresh = type(sub)(sub.config)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, fresh)
