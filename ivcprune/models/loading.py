"""One function that loads a vision-language checkpoint of any supported family (wrappers, bench, visualize).

The class comes from the checkpoint's ``model_type`` (or is named by the caller); DeepSeek-VL2, which transformers
does not ship, loads through the project's own model class.
"""

from __future__ import annotations

import json
from pathlib import Path

# config.json model_type -> model class (transformers class name, or "module:Class" for the project's own models)
MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "deepseek_vl_v2": "ivcprune.models.deepseek_vl2:DeepseekVL2ForCausalLM",
}


def checkpoint_model_type(path) -> str | None:
    """model_type of a checkpoint: a local folder's config.json read directly (AutoConfig rejects DeepSeek-VL2's),
    else transformers' AutoConfig (hub ids)."""
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    if Path(path).exists():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).model_type


def model_class(class_name: str):
    """The class object of a ``MODEL_CLASSES`` value."""
    import importlib

    if ":" in class_name:
        module, name = class_name.split(":", 1)
        return getattr(importlib.import_module(module), name)
    import transformers

    return getattr(transformers, class_name)


def load_vl_model(path, *, dtype=None, attn: str = "sdpa", class_name: str | None = None, device=None,
                  revision: str | None = None, device_map=None):
    """The model at ``path`` (folder or hub id) in eval mode, with the class of its model_type unless named."""
    if class_name is None:
        model_type = checkpoint_model_type(path)
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"{path}: model_type {model_type!r} is not supported (supported: {sorted(MODEL_CLASSES)})")
        class_name = MODEL_CLASSES[model_type]
    cls = model_class(class_name)
    if ":" in class_name:  # the project's own models take torch_dtype / device directly
        return cls.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn, device=device,
                                   revision=revision).eval()
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = cls.from_pretrained(path, **kwargs).eval()
    return model if device is None or device_map is not None else model.to(device)
