"""Processors without a video processor, for environments without torchvision.

transformers 5.23 makes every Qwen-VL / InternVL processor require a video processor, and video
processors import torchvision; ``AutoProcessor.from_pretrained`` therefore fails on a CPU-only
install even for still images. ``load_processor`` tries the stock path first and otherwise
assembles the same processor class from its tokenizer, image processor and chat template with
``video_processor=None`` (any call with ``videos=`` then fails loudly, images work unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path

_VIDEO = "video_processor"


def assemble_processor(processor_cls, image_processor, tokenizer, chat_template=None, **extra):
    """Instantiate ``processor_cls`` with ``video_processor=None`` when the class wants one."""
    attrs = processor_cls.get_attributes()
    kwargs = {"image_processor": image_processor, "tokenizer": tokenizer, **extra}
    if _VIDEO not in attrs:
        return processor_cls(chat_template=chat_template, **kwargs)
    obj = processor_cls.__new__(processor_cls)
    stock_check = processor_cls.check_argument_for_proper_class

    def check(name, arg):
        # the stock check cannot even resolve the video base class without torchvision
        return None if name == _VIDEO and arg is None else stock_check(obj, name, arg)

    obj.check_argument_for_proper_class = check
    try:
        processor_cls.__init__(obj, chat_template=chat_template, video_processor=None, **kwargs)
    finally:
        del obj.check_argument_for_proper_class
    return obj


def save_processor(processor, folder, video_config: dict | None = None) -> None:
    """``save_pretrained`` that tolerates ``video_processor=None``.

    ``video_config`` (a plain dict with ``video_processor_type``) is written as
    ``video_preprocessor_config.json`` so that installs *with* torchvision load the folder through
    the stock ``AutoProcessor`` path.
    """
    if getattr(processor, _VIDEO, True) is not None:
        processor.save_pretrained(folder)
        return
    present = [a for a in type(processor).get_attributes() if a != _VIDEO]
    processor.get_attributes = lambda: present  # instance-level shadow, removed below
    try:
        processor.save_pretrained(folder)
    finally:
        del processor.get_attributes
    cfg_file = Path(folder) / "processor_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        cfg.pop(_VIDEO, None)
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if video_config:
        (Path(folder) / "video_preprocessor_config.json").write_text(json.dumps(video_config, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _processor_class(folder: Path, cfg: dict):
    """The processor class a folder names (processor/preprocessor config, else by model type)."""
    import transformers as tf
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = cfg.get("processor_class") or _read_json(folder / "preprocessor_config.json").get("processor_class")
    if not name:
        model_type = _read_json(folder / "config.json").get("model_type")
        name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(tf, name, None) if isinstance(name, str) else None


def _chat_template(folder: Path, cfg: dict, tokenizer):
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    return (
        _read_json(folder / "chat_template.json").get("chat_template")
        or cfg.get("chat_template")
        or getattr(tokenizer, "chat_template", None)
    )


PROCESSOR_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def _local_folder(name_or_path, revision=None) -> Path | None:
    """A local folder, or a hub id resolved to its cached snapshot (processor files only, never the weights).

    Goes through the normal Hugging Face cache, so HF_HUB_OFFLINE=1 is honoured; None when it cannot be had.
    """
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=PROCESSOR_FILES))
    except Exception:  # noqa: BLE001 - the caller re-raises the stock loading error, which names the cause
        return None


def load_processor(folder, **kwargs):
    """``AutoProcessor.from_pretrained`` with a still-image fallback when video processors cannot load.

    Works for the factory's folders and for real local checkpoints (Qwen2-VL, Qwen2.5-VL, InternVL
    -hf) on installs without torchvision: the image processor is then the PIL backend.
    """
    import transformers as tf

    try:
        return tf.AutoProcessor.from_pretrained(folder, **kwargs)
    except (ImportError, OSError, AttributeError, TypeError, ValueError) as err:
        stock_error = err
    folder = _local_folder(folder, kwargs.get("revision"))
    if folder is None:
        raise stock_error
    cfg = _read_json(folder / "processor_config.json")
    proc_cls = _processor_class(folder, cfg)
    if proc_cls is None or _VIDEO not in proc_cls.get_attributes():
        raise stock_error
    image_processor = tf.AutoImageProcessor.from_pretrained(folder, backend="pil", **kwargs)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, **kwargs)
    skip = {"processor_class", "chat_template", "auto_map", *proc_cls.get_attributes()}
    extra = {k: v for k, v in cfg.items() if k not in skip}
    try:
        return assemble_processor(proc_cls, image_processor, tokenizer, _chat_template(folder, cfg, tokenizer), **extra)
    except Exception as err:  # keep the stock failure visible: it is the root cause
        raise err from stock_error
