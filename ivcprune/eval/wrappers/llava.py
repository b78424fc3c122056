"""LLaVA-1.5 chat wrapper (llava-hf checkpoints), plus the small base the native-class wrappers share.

Prompt (HARNESS §8): ``<system> USER:  <image> {text} ASSISTANT: ``, built as a string exactly as the official
(VLMEvalKit) wrapper does. Images are padded to a centred square in the image-mean colour before the processor,
LLaVA-1.5's "pad" aspect mode: grounding boxes are read in that padded frame (HARNESS §5), and the same
input keeps general VQA faithful to LLaVA-1.5's own evaluation (the processor would centre-crop instead).
"""

from __future__ import annotations

from ivcprune.eval.wrappers.common import kv_bytes_per_token, resolve_attn, resolve_dtype
from ivcprune.eval.wrappers.qwen import QwenVL

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions. ")


class NativeVLWrapper(QwenVL):
    """A harness Model over a transformers-native VL class: loading, pruning and stats as in the Qwen wrapper.

    Subclasses set ``model_class`` and implement ``build_inputs`` (and ``configure_image_processor``).
    """

    model_class = ""
    default_max_new_tokens = 512

    def __init__(self, entry, device: str = "cpu"):  # noqa: D107 - replaces QwenVL's Qwen-specific set-up
        import transformers as tf

        from ivcprune.eval.registry import make_method
        from ivcprune.models.processor_loading import load_processor

        self.entry, self.family = entry, entry.family
        generation = dict(entry.get("generation") or {})
        self.max_new_tokens = int(generation.get("max_new_tokens", self.default_max_new_tokens))
        path, revision = entry.checkpoint, entry.get("revision")
        extra = {"revision": revision} if revision else {}
        dtype = resolve_dtype(entry.get("dtype", "auto"), device)
        attn = resolve_attn(entry.get("attn", "auto"), device)
        load_kwargs = {"dtype": dtype, "attn_implementation": attn, **extra}
        if device == "auto":
            load_kwargs["device_map"] = "auto"
        self.model = getattr(tf, self.model_class).from_pretrained(path, **load_kwargs).eval()
        if device != "auto":
            self.model.to(device)
        self.device = self.model.device
        self.processor = load_processor(path, **extra)
        self.processor.image_processor = tf.AutoImageProcessor.from_pretrained(
            path, backend="pil", **self.image_processor_overrides(), **extra)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = int(self.model.config.image_token_id)
        self.method = make_method(entry.pruning)
        self.kv_per_token = kv_bytes_per_token(self.model.config.get_text_config(), dtype)
        self.last_stats: dict = {}
        self.meta = {"device": str(self.device), "dtype": str(dtype).replace("torch.", ""),
                     "attn": getattr(self.model.config, "_attn_implementation", attn),
                     "image_processor": type(self.processor.image_processor).__name__}

    def image_processor_overrides(self) -> dict:
        return {}

    def _decode(self, new) -> str:
        """The new tokens without special tokens, stripped (as the official LLaVA / InternVL wrappers do)."""
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


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


class LlavaWrapper(NativeVLWrapper):
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
