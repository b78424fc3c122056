"""Qwen2-VL / Qwen2.5-VL chat wrapper: parts -> chat template (image, then text) -> greedy generate -> text.

Pruning is applied around ``generate`` through the public ``ivcprune.prune`` API only; the wrapper reports the
per-row statistics of HARNESS §1 from the selection record, so nothing recomputes what the record says.
"""

from __future__ import annotations

import contextlib

from ivcprune.eval.wrappers.common import GenTimer, count_image_tokens, kv_bytes_per_token, resolve_attn, \
    resolve_dtype

QWEN25 = "qwen2_5_vl"
FACTOR = 28  # patch 14 x spatial merge 2


class QwenVL:
    """The harness Model for the ``qwen2_vl`` and ``qwen2_5_vl`` families."""

    def __init__(self, entry, device: str = "cpu"):
        import transformers as tf

        from ivcprune.eval.registry import make_method

        self.entry = entry
        self.family = entry.family
        self.min_pixels = int(entry.get("min_pixels") or 4 * 28 * 28)
        self.max_pixels = int(entry.get("max_pixels") or 16384 * 28 * 28)
        gen = dict(entry.get("generation") or {})
        self.max_new_tokens = int(gen.get("max_new_tokens", 512))
        path, revision = entry.checkpoint, entry.get("revision")
        dtype = resolve_dtype(entry.get("dtype", "auto"), device)
        attn = resolve_attn(entry.get("attn", "auto"), device)
        cls = tf.Qwen2_5_VLForConditionalGeneration if self.family == QWEN25 else tf.Qwen2VLForConditionalGeneration
        kwargs = {"dtype": dtype, "attn_implementation": attn}
        if revision:
            kwargs["revision"] = revision
        if device == "auto":
            kwargs["device_map"] = "auto"
        self.model = cls.from_pretrained(path, **kwargs).eval()
        if device != "auto":
            self.model.to(device)
        self.device = self.model.device
        self.processor = self._processor(path, revision)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = int(self.model.config.image_token_id)
        self.method = make_method(entry.pruning)
        self.kv_per_token = kv_bytes_per_token(self.model.config.get_text_config(), dtype)
        self.last_stats: dict = {}
        self.meta = {"device": str(self.device), "dtype": str(dtype).replace("torch.", ""),
                     "attn": getattr(self.model.config, "_attn_implementation", attn),
                     "image_processor": type(self.processor.image_processor).__name__}

    def _processor(self, path: str, revision: str | None):
        """The PIL image processor with the registry's pixel budget (torchvision is never required)."""
        import transformers as tf

        from ivcprune.models.processor_loading import load_processor

        extra = {"revision": revision} if revision else {}
        image_processor = tf.AutoImageProcessor.from_pretrained(
            path, backend="pil", size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}, **extra)
        processor = load_processor(path, **extra)
        processor.image_processor = image_processor
        return processor

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(w', h'): the frame the vision encoder sees after the processor's resize."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        rh, rw = smart_resize(int(h), int(w), factor=FACTOR, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return rw, rh

    def build_inputs(self, parts):
        content, images = [], []
        for kind, value in parts:
            if kind == "image":
                images.append(value)
                content.append({"type": "image"})
            elif kind == "text":
                content.append({"type": "text", "text": value})
            else:
                raise ValueError(f"unknown prompt part {kind!r}")
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        kwargs = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        return self.processor(**kwargs).to(self.device)

    def generate(self, parts, dataset=None) -> str:
        import torch

        from ivcprune import prune

        inputs = self.build_inputs(parts)
        prompt_len = int(inputs["input_ids"].shape[1])
        image_tokens = count_image_tokens(inputs["input_ids"][0], self.image_token_id)
        timer = GenTimer(self.device)
        ctx = prune(self.model, self.method) if self.method is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx as trace:
            timer.start()
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                      repetition_penalty=1.0, temperature=None, top_p=None, top_k=None,
                                      streamer=timer)
            timer.stop()
        new = out[0, prompt_len:]
        sel = trace.selections[-1] if (trace is not None and trace.selections) else None
        self.last_stats = self._stats(sel, image_tokens, prompt_len, timer, int(new.shape[0]))
        return self._decode(new)

    def _decode(self, new) -> str:
        if self.family == QWEN25:
            return self.tokenizer.decode(new, skip_special_tokens=True)
        # Qwen2-VL boxes live between special tokens: keep them, drop only end-of-turn / padding ids
        stop = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        ids = [int(t) for t in new.tolist()]
        while ids and ids[-1] in stop:
            ids.pop()
        return self.tokenizer.decode(ids, skip_special_tokens=False)

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


def load(entry, device: str = "cpu") -> QwenVL:
    return QwenVL(entry, device)

