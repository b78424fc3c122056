"""IVC-Prune: training-free, prompt-aware vision-token pruning for LVLMs over stock transformers."""

__version__ = "0.1.0"
