"""Tiny randomly initialised checkpoints for tests, the demo and the harness (no network needed).

Each family's folder loads with the stock ``from_pretrained`` (model and processor), like a real
checkpoint. See ``factory`` for the build/cache API and the family modules for token-count rules.
"""

from ivcprune.models.processor_loading import load_processor
from .factory import FACTORY_VERSION, TINY_FAMILIES, make_tiny_checkpoint, read_record, settings, tiny_checkpoint
from .images import make_image
from .inputs import messages_for, tiny_inputs

__all__ = [
    "FACTORY_VERSION",
    "TINY_FAMILIES",
    "load_processor",
    "make_image",
    "make_tiny_checkpoint",
    "messages_for",
    "read_record",
    "settings",
    "tiny_checkpoint",
    "tiny_inputs",
]
