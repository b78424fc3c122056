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

    def count_image_tokens(self, inputs, b: int = 0) -> int:
        """Image tokens of sample ``b`` of a (padded) batch."""
        return int((inputs["input_ids"][b] == self.image_token_id).sum())

    # --- batching (issue 13): rows are encoded one by one, then left-padded into one batch -------------------
    sequence_keys = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")

    def encode(self, parts):
        """One row's model inputs (a batch of one); an exception here is that row's miss alone."""
        return self.build_inputs(parts)

    def collate(self, rows: list):
        """Encoded rows -> one left-padded batch: sequence tensors padded on the left (``pad_token_id`` for the
        ids, 0 elsewhere), everything else (pixels, grids, image sizes) concatenated along the first axis, as the
        processor lays out a batch itself."""
        if len(rows) == 1:
            return rows[0]
        import torch
        from transformers import BatchFeature

        length = max(int(r["input_ids"].shape[1]) for r in rows)
        out = {}
        for key in dict.fromkeys(k for r in rows for k in r.keys()):  # a text-only row has no pixels
            values = [r[key] for r in rows if key in r]
            if key in self.sequence_keys:
                fill = self.pad_token_id if key == "input_ids" else 0
                padded = []
                for v in values:
                    pad = v.new_full((v.shape[0], length - v.shape[1], *v.shape[2:]), fill)
                    padded.append(torch.cat([pad, v], 1))
                out[key] = torch.cat(padded, 0)
            else:
                out[key] = torch.cat(values, 0)
        return BatchFeature(out)

    def encoded_length(self, encoded) -> int:
        """Prompt tokens of one encoded row (what ``encode`` returned)."""
        return self.prompt_length(encoded)

    def prompt_length(self, inputs, b: int = 0) -> int:
        """Non-padding prompt tokens of sample ``b``."""
        mask = inputs.get("attention_mask")
        return int(mask[b].sum()) if mask is not None else int(inputs["input_ids"].shape[1])

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.generation_config, "pad_token_id", None)
        if pad is None:
            pad = min(self.eos_ids)
        return int(pad)

    @property
    def eos_ids(self) -> set[int]:
        """The ids that end an answer (the generation config's, else the model config's)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def row_tokens(self, seq):
        """One sample's new tokens up to and including its first end-of-answer id: what it generates alone
        (in a batch, a finished sample goes on receiving padding until the longest one ends)."""
        eos = self.eos_ids
        ids = seq.tolist()
        for k, t in enumerate(ids):
            if int(t) in eos:
                return seq[:k + 1]
        return seq

    def run_generate(self, inputs, timer: GenTimer):
        """Greedy decoding; the timer stamps the first new token (prefill) and the end."""
        return self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                   repetition_penalty=1.0, temperature=None, top_p=None, top_k=None, streamer=timer)

    def _decode(self, new) -> str:
        """The new tokens without special tokens, stripped."""
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # --- the Model interface -----------------------------------------------------------------------------------
    def generate(self, parts, dataset=None) -> str:
        """One row: the batch of one of ``generate_batch``; its error is raised, its stats go to ``last_stats``."""
        out = self.generate_batch([parts], dataset)[0]
        if out.error is not None:
            raise out.error
        self.last_stats = out.stats
        return out.text

    def generate_batch(self, batch: list, dataset=None) -> list:
        """Several rows in one left-padded ``generate`` call; one ``RowOutput`` per row, in order.

        Each row is encoded on its own first (a row whose image or prompt cannot be encoded is that row's miss);
        the rest are padded into one batch. An exception from ``generate`` itself propagates (the runner then
        retries the rows one by one). Stats are per row: kept tokens and KV bytes of sample b from the selection
        record, prefill / decode latency of the batch, the batch's decode steps.
        """
        import torch

        from ivcprune import prune
        from ivcprune.eval.batching import RowOutput
        from ivcprune.eval.preflight import check_prompt_length

        outputs: list = [None] * len(batch)
        encoded, slots = [], []
        for k, parts in enumerate(batch):
            try:
                enc = self.encode(parts)
                check_prompt_length(self.model, self.encoded_length(enc), self.max_new_tokens)  # too long: a miss
            except Exception as err:  # noqa: BLE001 - this row alone is a counted miss
                outputs[k] = RowOutput(error=err)
                continue
            encoded.append(enc)
            slots.append(k)
        if not encoded:
            return outputs
        inputs = self.collate(encoded)
        timer = GenTimer(self.device)
        ctx = prune(self.model, self.method) if self.method is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx as trace:
            timer.start()
            out = self.run_generate(inputs, timer)
            timer.stop()
        sel = trace.selections[-1] if (trace is not None and trace.selections) else None
        length = int(inputs["input_ids"].shape[1])
        steps = int(out.shape[1]) - length
        for b, k in enumerate(slots):
            new = self.row_tokens(out[b, length:])
            stats = self._stats(sel, self.count_image_tokens(inputs, b), self.prompt_length(inputs, b), timer,
                                int(new.shape[0]), b)
            stats["decode_steps"] = steps
            outputs[k] = RowOutput(text=self._decode(new), stats=stats, tokens=[int(t) for t in new.tolist()])
        return outputs

    def _stats(self, sel, image_tokens: int, prompt_len: int, timer, new_tokens: int, b: int = 0) -> dict:
        if sel is not None and sel.pruned:
            kept = int(sel.kept_image_tokens[b])
            kv_full, kv_kept = int(sel.kv_bytes_full[b]), int(sel.kv_bytes_kept[b])
            selection_ms = float(sel.selection_ms)
        else:
            kept = image_tokens
            kv_full = kv_kept = prompt_len * self.kv_per_token
            selection_ms = 0.0
        return {"image_tokens": image_tokens, "kept_tokens": kept, "kv_bytes_full": kv_full,
                "kv_bytes_kept": kv_kept, "prefill_ms": timer.prefill_ms, "decode_ms": timer.decode_ms,
                "new_tokens": new_tokens, "selection_ms": selection_ms}
