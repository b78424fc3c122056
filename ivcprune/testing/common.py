"""Settings shared by every family's language model, so the families stay comparable."""

from __future__ import annotations


def text_kwargs(s: dict, vocab_size: int, bos: int, eos: int, pad: int, theta: float, **rope_extra) -> dict:
    """Decoder config kwargs from the factory settings: GQA heads, SwiGLU width 3x, no tied head."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": s["hidden"],
        "intermediate_size": s["hidden"] * 3,
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta, **rope_extra},
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "tie_word_embeddings": False,
    }
