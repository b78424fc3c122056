"""LLaVA-1.5 chat wrapper (llava-hf checkpoints).

Prompt (docs/HARNESS.md §8): ``<system> USER:  <image> {text} ASSISTANT: ``, built as a string exactly as the official
(VLMEvalKit) wrapper does. Images are padded to a centred square in the image-mean colour before the processor,
LLaVA-1.5's "pad" aspect mode: grounding boxes are read in that padded frame (docs/HARNESS.md §5), and the same
input keeps general VQA faithful to LLaVA-1.5's own evaluation (the processor would centre-crop instead).
"""

from __future__ import annotations

from ivcprune.eval.wrappers.base import VLWrapper

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions. ")


def split_parts(parts):
    """(kind, value) prompt parts -> ordered list of ("image", PIL) / ("text", str), validated."""
    for kind, _ in parts:
        if kind not in ("image", "text"):
            raise ValueError(f"unknown prompt part {kind!r}")
    return list(parts)


def pad_to_square(image, fill):
    """LLaVA-1.5 ``expand2square``: the image centred on a max(W, H) square, offsets (S - W)//2, (S - H)//2."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


class LlavaWrapper(VLWrapper):
    """The harness Model for the ``llava`` family."""

    model_class = "LlavaForConditionalGeneration"
    default_max_new_tokens = 2048

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        """(w', h') the vision tower sees: the padded square resized and cropped to the crop size."""
        crop = self.processor.image_processor.crop_size
        return int(crop["width"]), int(crop["height"])

    def prompt_text(self, parts) -> str:
        body = "".join(" <image> " if kind == "image" else value for kind, value in split_parts(parts))
        return f"{SYSTEM}USER: {body} ASSISTANT: "

    def build_inputs(self, parts):
        mean = self.processor.image_processor.image_mean
        fill = tuple(int(round(255 * float(m))) for m in mean)
        images = [pad_to_square(value, fill) for kind, value in split_parts(parts) if kind == "image"]
        kwargs = {"text": [self.prompt_text(parts)], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        return self.processor(**kwargs).to(self.device)


def load(entry, device: str = "cpu") -> LlavaWrapper:
    return LlavaWrapper(entry, device)
