"""DeepSeek-VL2 chat wrapper: parts -> one ``<|User|>`` turn (``<image>\\n`` per image, then the text) -> greedy.

The model is the project's own ``DeepseekVL2ForCausalLM`` (transformers has no class for it) with its own
``generate``; pruning goes through the public ``ivcprune.prune`` API, and the original image sizes reach the
adapter as ``image_sizes`` (letterbox-free global cells). Answers keep the grounding tags
(``<|ref|>…<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>``, 0-999); the harness maps boxes with ``box_scale``.
"""

from __future__ import annotations

import contextlib

from ivcprune.eval.wrappers.common import GenTimer, resolve_dtype
from ivcprune.eval.wrappers.qwen import QwenVL


def resolve_device(device: str) -> str:
    """``auto`` (the runner's --device-map auto) holds the whole model on one device: cuda when present."""
    if str(device) != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DeepseekVL2Wrapper(QwenVL):
    """The harness Model for the ``deepseek_vl2`` family (reuses the Qwen wrapper's stats and decoding)."""

    def __init__(self, entry, device: str = "cpu"):  # noqa: D107 - replaces QwenVL's Qwen-specific set-up
        from ivcprune.eval.registry import make_method
        from ivcprune.models import get_adapter
        from ivcprune.models.deepseek_vl2 import DeepseekVL2ForCausalLM, DeepseekVL2Processor

        self.entry, self.family = entry, entry.family
        generation = dict(entry.get("generation") or {})
        self.max_new_tokens = int(generation.get("max_new_tokens", 2048))
        path, revision = entry.checkpoint, entry.get("revision")
        device = resolve_device(device)
        dtype = resolve_dtype(entry.get("dtype", "auto"), device)
        attn = str(entry.get("attn") or "auto")
        attn = "sdpa" if attn == "auto" else attn  # pinned: the MLA head dims (192 q/k, 128 v) suit sdpa/eager
        self.model = DeepseekVL2ForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn,
                                                            device=device, revision=revision)
        self.device = self.model.device
        self.processor = DeepseekVL2Processor.from_pretrained(path, revision=revision)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = int(self.processor.image_token_id)
        self.method = make_method(entry.pruning)
        self.kv_per_token = get_adapter(self.model).kv_bytes_per_token()  # MLA: latent + k_pe
        self.last_stats: dict = {}
        self.meta = {"device": str(self.device), "dtype": str(dtype).replace("torch.", ""), "attn": attn,
                     "image_processor": type(self.processor).__name__}

    def prompt_text(self, parts) -> str:
        """User content: ``<image>\\n`` for every image, text pieces verbatim, in the given order."""
        pieces = []
        for kind, value in parts:
            if kind == "image":
                pieces.append(f"{self.processor.image_token}\n")
            elif kind == "text":
                pieces.append(value)
            else:
                raise ValueError(f"unknown prompt part {kind!r}")
        return "".join(pieces)

    def build_inputs(self, parts):
        images = [value for kind, value in parts if kind == "image"]
        return self.processor(prompts=self.prompt_text(parts), images=images).to(self.device)

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(W, H) of the tiled local canvas the processor picks for a w x h image."""
        from ivcprune.models.deepseek_vl2 import select_best_resolution

        return select_best_resolution((int(w), int(h)), self.processor.candidates)

    def generate(self, parts, dataset=None) -> str:
        import torch

        from ivcprune import prune

        inputs = self.build_inputs(parts)
        prompt_len = int(inputs["input_ids"].shape[1])
        image_tokens = int(inputs["images_seq_mask"][0].sum())
        timer = GenTimer(self.device)
        # the prefill forward ends at the first-token logits: the second "put" stamps the prefill time
        first = self.model.register_forward_hook(lambda *_: timer.put(None))
        ctx = prune(self.model, self.method) if self.method is not None else contextlib.nullcontext()
        try:
            with torch.inference_mode(), ctx as trace:
                timer.start()
                timer.put(None)
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          repetition_penalty=1.0)
                timer.stop()
        finally:
            first.remove()
        new = out[0, prompt_len:]
        sel = trace.selections[-1] if (trace is not None and trace.selections) else None
        self.last_stats = self._stats(sel, image_tokens, prompt_len, timer, int(new.shape[0]))
        return self._decode(new)

    def _decode(self, new) -> str:
        """Special tokens kept (grounding tags); the EOS and everything after it dropped."""
        ids = [int(t) for t in new.tolist()]
        if self.processor.eos_id in ids:
            ids = ids[:ids.index(self.processor.eos_id)]
        return self.processor.decode(ids, skip_special_tokens=False).strip()


def load(entry, device: str = "cpu") -> DeepseekVL2Wrapper:
    return DeepseekVL2Wrapper(entry, device)
