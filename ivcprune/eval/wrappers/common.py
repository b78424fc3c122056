"""Helpers every family wrapper shares: dtype / attention resolution, prefill-decode timing, KV accounting."""

from __future__ import annotations

import time

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "half": "float16",
           "fp32": "float32", "float32": "float32", "float": "float32"}


def resolve_dtype(name, device: str):
    """Registry dtype -> torch dtype; CPU always runs float32 (docs/HARNESS.md §8), ``auto`` is bf16 on CUDA."""
    import torch

    if not str(device).startswith(("cuda", "auto")) or not torch.cuda.is_available():
        return torch.float32
    key = str(name or "auto").lower()
    if key == "auto":
        return torch.bfloat16
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r} (use auto, bfloat16, float16 or float32)")
    return getattr(torch, _DTYPES[key])


def resolve_attn(name, device: str) -> str:
    """``auto``: flash_attention_2 on CUDA when flash_attn imports, otherwise sdpa."""
    key = str(name or "auto")
    if key != "auto":
        return key
    if str(device).startswith(("cuda", "auto")):
        try:
            import flash_attn  # noqa: F401

            import torch

            if torch.cuda.is_available():
                return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


class GenTimer:
    """A generate() streamer that timestamps the first new token: prefill = call -> first-token logits.

    ``put`` is called once with the prompt, then once per new token; CUDA is synchronised only at the first
    token and at the end, so decoding stays asynchronous in between (docs/HARNESS.md §10).
    """

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.t0 = self.t_first = self.t_end = None
        self._puts = 0

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self._puts = 0
        self.t_first = None
        self.t0 = self._now()

    def put(self, value) -> None:
        self._puts += 1
        if self._puts == 2 and self.t_first is None:
            self.t_first = self._now()

    def end(self) -> None:
        pass

    def stop(self) -> None:
        self.t_end = self._now()
        if self.t_first is None:
            self.t_first = self.t_end

    @property
    def prefill_ms(self) -> float:
        return round((self.t_first - self.t0) * 1000.0, 3)

    @property
    def decode_ms(self) -> float:
        return round((self.t_end - self.t_first) * 1000.0, 3)
