"""The harness Model every family wrapper shares: loading from a registry entry, greedy generation under
``ivcprune.prune``, prefill/decode timing and the per-row statistics of docs/HARNESS.md §1.

A family wrapper says only what differs: the model and processor classes, how prompt parts become inputs,
how the answer is decoded, and the frame its vision encoder sees (``input_size``).
"""

from __future__ import annotations

import contextlib

from ivcprune.eval.wrappers.common import GenTimer, resolve_attn, resolve_dtype


def chat_messages(parts) -> tuple[list[dict], list]:
    """(kind, value) prompt parts -> one user turn of chat-template content items, and the images in order."""
    content, images = [], []
    for kind, value in parts:
        if kind == "image":
            images.append(value.convert("RGB"))
            content.append({"type": "image"})
        elif kind == "text":
            content.append({"type": "text", "text": value})
        else:
            raise ValueError(f"unknown prompt part {kind!r}")
    return [{"role": "user", "content": content}], images


class VLWrapper:
    """Base harness Model over a transformers-style vision-language checkpoint."""

    model_class = ""  # a transformers class name (HF-native families)
    default_max_new_tokens = 512

    def __init__(self, entry, device: str = "cpu"):
        from ivcprune.eval.registry import make_method
        from ivcprune.models import get_adapter

        self.entry, self.family = entry, entry.family
        generation = dict(entry.get("generation") or {})
        self.max_new_tokens = int(generation.get("max_new_tokens", self.default_max_new_tokens))
        path, revision = entry.checkpoint, entry.get("revision")
        device = self.resolve_device(device)
        dtype = resolve_dtype(entry.get("dtype", "auto"), device)
        attn = self.resolve_attn(entry.get("attn", "auto"), device)
        self.model = self.load_model(path, dtype, attn, device, revision)
        self.device = self.model.device
        self.processor = self.load_processor(path, revision)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = int(self.model.config.image_token_id) if hasattr(self.model.config, "image_token_id") \
            else int(self.processor.image_token_id)
        self.method = make_method(entry.pruning)
        self.kv_per_token = get_adapter(self.model).kv_bytes_per_token()  # the family's cache layout (MLA too)
        self.last_stats: dict = {}
        self.meta = {"device": str(self.device), "dtype": str(dtype).replace("torch.", ""),
                     "attn": getattr(self.model.config, "_attn_implementation", None) or attn,
                     "image_processor": type(getattr(self.processor, "image_processor", self.processor)).__name__}

    # --- what a family may override ----------------------------------------------------------------------------
    def resolve_device(self, device: str) -> str:
        return device

    def resolve_attn(self, name, device: str) -> str:
        return resolve_attn(name, device)

    def load_model(self, path, dtype, attn, device, revision):
        from ivcprune.models.loading import load_vl_model

        auto = device == "auto"
        return load_vl_model(path, dtype=dtype, attn=attn, class_name=self.model_class_name(), revision=revision,
                             device=None if auto else device, device_map="auto" if auto else None)

    def model_class_name(self) -> str:
        return self.model_class

    def load_processor(self, path, revision):
        """The family processor with the stock PIL image processor (torchvision is never required)."""
        import transformers as tf

        from ivcprune.models.processor_loading import load_processor

        extra = {"revision": revision} if revision else {}
        processor = load_processor(path, **extra)
        processor.image_processor = tf.AutoImageProcessor.from_pretrained(
            path, backend="pil", **self.image_processor_overrides(), **extra)
        return processor

    def image_processor_overrides(self) -> dict:
        return {}

    def build_inputs(self, parts):
        """Chat template over one user turn (images, then text, in the given order)."""
        messages, images = chat_messages(parts)
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        kwargs = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        return self.processor(**kwargs).to(self.device)

    def count_image_tokens(self, inputs) -> int:
        return int((inputs["input_ids"][0] == self.image_token_id).sum())

    def run_generate(self, inputs, timer: GenTimer):
        """Greedy decoding; the timer stamps the first new token (prefill) and the end."""
        return self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                   repetition_penalty=1.0, temperature=None, top_p=None, top_k=None, streamer=timer)

    def _decode(self, new) -> str:
        """The new tokens without special tokens, stripped."""
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # --- the Model interface -----------------------------------------------------------------------------------
    def generate(self, parts, dataset=None) -> str:
        import torch

        from ivcprune import prune

        from ivcprune.eval.preflight import check_prompt_length

        inputs = self.build_inputs(parts)
        prompt_len = int(inputs["input_ids"].shape[1])
        check_prompt_length(self.model, prompt_len, self.max_new_tokens)  # too long: a counted miss, not run
        image_tokens = self.count_image_tokens(inputs)
        timer = GenTimer(self.device)
        ctx = prune(self.model, self.method) if self.method is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx as trace:
            timer.start()
            out = self.run_generate(inputs, timer)
            timer.stop()
        new = out[0, prompt_len:]
        sel = trace.selections[-1] if (trace is not None and trace.selections) else None
        self.last_stats = self._stats(sel, image_tokens, prompt_len, timer, int(new.shape[0]))
        return self._decode(new)

    def _stats(self, sel, image_tokens: int, prompt_len: int, timer, new_tokens: int) -> dict:
        if sel is not None and sel.pruned:
            kept = int(sel.kept_image_tokens[0])
            kv_full, kv_kept = int(sel.kv_bytes_full[0]), int(sel.kv_bytes_kept[0])
            selection_ms = float(sel.selection_ms)
        else:
            kept = image_tokens
            kv_full = kv_kept = prompt_len * self.kv_per_token
            selection_ms = 0.0
        return {"image_tokens": image_tokens, "kept_tokens": kept, "kv_bytes_full": kv_full,
                "kv_bytes_kept": kv_kept, "prefill_ms": timer.prefill_ms, "decode_ms": timer.decode_ms,
                "new_tokens": new_tokens, "selection_ms": selection_ms}
