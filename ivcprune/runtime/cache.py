"""Cutting the KV cache of the layers below K, and measuring what a cached token costs."""

from __future__ import annotations

import torch


def check_cache(cache) -> None:
    """Refuse cache kinds the runtime cannot cut in place, before any work is done."""
    if cache is None:
        return
    kind = type(cache).__name__
    if getattr(cache, "is_compileable", False) or "Static" in kind:
        raise NotImplementedError(
            f"ivcprune cannot prune with a {kind} (a fixed-size cache cannot shrink); use the default DynamicCache "
            "(do not pass cache_implementation='static')"
        )
    if "Quantized" in kind or "Offloaded" in kind or getattr(cache, "offloading", False):
        raise NotImplementedError(f"ivcprune does not support {kind}: quantized or offloaded caches cannot be cut")
    if not hasattr(cache, "layers"):
        raise NotImplementedError(f"ivcprune expects a transformers Cache with per-layer tensors, got {kind}")


def layer_tensors(layer) -> list[tuple[str, torch.Tensor]]:
    """The cached tensors of one cache layer (keys/values, or any extra per-token tensors a family stores)."""
    return [(name, t) for name, t in vars(layer).items() if isinstance(t, torch.Tensor) and t.ndim == 4]


def cut_layers(cache, num_layers: int, index: torch.Tensor) -> None:
    """Gather every cached tensor of layers [0, num_layers) along the sequence axis at ``index`` (B, P)."""
    for layer in cache.layers[:num_layers]:
        for name, tensor in layer_tensors(layer):
            idx = index.to(tensor.device)
            b, h, _, d = tensor.shape
            gathered = tensor.gather(2, idx[:, None, :, None].expand(b, h, idx.shape[1], d))
            setattr(layer, name, gathered)


def bytes_per_token(cache, num_layers: int) -> int:
    """Sum over layers of bytes per cached token, read from the live tensors (never a hard-coded dtype)."""
    return sum(bytes_per_layer(cache, num_layers))


def bytes_per_layer(cache, num_layers: int) -> list[int]:
    """Bytes per cached token of each layer (beta_l), read from the live tensors."""
    layers = list(cache.layers) if cache is not None else []
    return [sum(t.shape[1] * t.shape[3] * t.element_size() for _, t in layer_tensors(layer))
            for layer in layers[:num_layers]]


def cache_length(cache) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def analytic_bytes_per_token(text_config, dtype) -> int:
    """Bytes one prompt token occupies in a standard KV cache over all layers: N_L * 2 * H_kv * D * size.

    Used where no live cache exists (use_cache=False, unpruned runs); MLA and other layouts read the
    live tensors through :func:`bytes_per_token` instead.
    """
    heads = getattr(text_config, "num_attention_heads", 1)
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    size = torch.empty((), dtype=dtype).element_size()
    return int(text_config.num_hidden_layers * 2 * kv_heads * head_dim * size)
