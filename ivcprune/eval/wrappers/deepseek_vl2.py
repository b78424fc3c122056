"""DeepSeek-VL2 chat wrapper: parts -> one ``<|User|>`` turn (``<image>\\n`` per image, then the text) -> greedy.

The model is the project's own ``DeepseekVL2ForCausalLM`` (transformers has no class for it) with its own
``generate``; pruning goes through the public ``ivcprune.prune`` API, and the original image sizes reach the
adapter as ``image_sizes`` (letterbox-free global cells). Answers keep the grounding tags
(``<|ref|>…<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>``, 0-999); the harness maps boxes with ``box_scale``.
"""

from __future__ import annotations

from ivcprune.eval.wrappers.base import VLWrapper


def resolve_device(device: str) -> str:
    """``auto`` (the runner's --device-map auto) holds the whole model on one device: cuda when present."""
    if str(device) != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DeepseekVL2Wrapper(VLWrapper):
    """The harness Model for the ``deepseek_vl2`` family (the project's own model class and generate loop)."""

    default_max_new_tokens = 2048

    def resolve_device(self, device: str) -> str:
        return resolve_device(device)

    def resolve_attn(self, name, device: str) -> str:
        name = str(name or "auto")
        return "sdpa" if name == "auto" else name  # pinned: the MLA head dims (192 q/k, 128 v) suit sdpa/eager

    def model_class_name(self) -> str:
        from ivcprune.models.loading import MODEL_CLASSES

        return MODEL_CLASSES["deepseek_vl_v2"]

    def load_processor(self, path, revision):
        from ivcprune.models.deepseek_vl2 import DeepseekVL2Processor

        return DeepseekVL2Processor.from_pretrained(path, revision=revision)

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
        return self.collate([self.encode(parts)])

    def encode(self, parts):
        """One row as the processor's unbatched sample (ids, image mask, tiles, crops, sizes)."""
        from ivcprune.models.deepseek_vl2.processing import ASSISTANT, USER

        images = [value for kind, value in parts if kind == "image"]
        conversation = [{"role": USER, "content": self.prompt_text(parts)}, {"role": ASSISTANT, "content": ""}]
        return self.processor.encode_conversation(conversation, images)

    def encoded_length(self, encoded) -> int:
        return len(encoded["input_ids"])

    def collate(self, rows: list):
        """The processor's own batching: ids and masks left-padded, tiles / crops / sizes zero-padded."""
        return self.processor.batch(rows).to(self.device)

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(W, H) of the tiled local canvas the processor picks for a w x h image."""
        from ivcprune.models.deepseek_vl2 import select_best_resolution

        return select_best_resolution((int(w), int(h)), self.processor.candidates)

    def count_image_tokens(self, inputs, b: int = 0) -> int:
        return int(inputs["images_seq_mask"][b].sum())

    def run_generate(self, inputs, timer):
        """The model's own greedy loop; a forward hook stamps the first-token logits for the prefill time."""
        timer.put(None)  # the prompt (what a transformers streamer would receive first)
        first = self.model.register_forward_hook(lambda *_: timer.put(None))
        try:
            return self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       repetition_penalty=1.0, eos_token_id=sorted(self.eos_ids))
        finally:
            first.remove()

    def _decode(self, new) -> str:
        """Special tokens kept (grounding tags); the EOS and everything after it dropped."""
        ids = [int(t) for t in new.tolist()]
        if self.processor.eos_id in ids:
            ids = ids[:ids.index(self.processor.eos_id)]
        return self.processor.decode(ids, skip_special_tokens=False).strip()


def load(entry, device: str = "cpu") -> DeepseekVL2Wrapper:
    return DeepseekVL2Wrapper(entry, device)
