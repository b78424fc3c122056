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


def load_processor(folder, **kwargs):
    """``AutoProcessor.from_pretrained`` with a still-image fallback when video processors cannot load."""
    import transformers as tf

    try:
        return tf.AutoProcessor.from_pretrained(folder, **kwargs)
    except (ImportError, OSError, AttributeError, TypeError, ValueError) as err:
        cfg_file = Path(folder) / "processor_config.json"
        if not cfg_file.is_file():
            raise
        cfg = json.loads(cfg_file.read_text())
        proc_cls = getattr(tf, cfg.get("processor_class", ""), None)
        if proc_cls is None or _VIDEO not in proc_cls.get_attributes():
            raise
        stock_error = err
    image_processor = tf.AutoImageProcessor.from_pretrained(folder, backend="pil", **kwargs)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, **kwargs)
    template_file = Path(folder) / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
    skip = {"processor_class", "chat_template", *proc_cls.get_attributes()}
    extra = {k: v for k, v in cfg.items() if k not in skip}
    try:
        return assemble_processor(proc_cls, image_processor, tokenizer, template, **extra)
    except Exception as err:  # keep the stock failure visible: it is the root cause
        raise err from stock_error
