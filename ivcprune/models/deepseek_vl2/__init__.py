"""DeepSeek-VL2 (tiny / small / base) on stock transformers 5.23: model, processor, tiny factory.

Transformers has no DeepSeek-VL2 class and the official package needs transformers 4.38 + xformers,
so the vision tower, projector, tile layout and processor are implemented here, around transformers'
own DeepSeek language models. See docs/DEEPSEEK_VL2.md for the specification.
"""

from .configuration import DeepseekVL2Settings, load_config, parse_config
from .factory import make_tiny_deepseek_vl2
from .layout import ImageSpan, image_spans, num_image_tokens
from .loading import CheckpointMismatchError
from .modeling import DeepseekVL2ForCausalLM, positions_from_mask
from .processing import DeepseekVL2Processor, grounding_prompt, select_best_resolution

__all__ = [
    "CheckpointMismatchError",
    "DeepseekVL2ForCausalLM",
    "DeepseekVL2Processor",
    "DeepseekVL2Settings",
    "ImageSpan",
    "grounding_prompt",
    "image_spans",
    "load_config",
    "make_tiny_deepseek_vl2",
    "num_image_tokens",
    "parse_config",
    "positions_from_mask",
    "select_best_resolution",
]
