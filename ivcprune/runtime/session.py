"""``prune(model, method)``: attach the hooks for a block of code, remove every one of them on exit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ivcprune.core.selection import Selection
from ivcprune.methods.base import PruningMethod
from ivcprune.models.base import get_adapter
from ivcprune.runtime.hooks import PruneRuntime


class Trace:
    """What a ``prune`` block recorded: one Selection per prefill it saw (pass-throughs have pruned=False)."""

    def __init__(self, runtime: PruneRuntime):
        self._runtime = runtime

    @property
    def selections(self) -> list[Selection]:
        return self._runtime.selections

    @property
    def layer(self) -> int:
        return self._runtime.layer

    @property
    def method(self) -> PruningMethod:
        return self._runtime.method

    @property
    def adapter(self):
        return self._runtime.adapter

    @property
    def last(self) -> Selection | None:
        return self.selections[-1] if self.selections else None


def _check_model(model: nn.Module) -> None:
    if hasattr(model, "_orig_mod") or type(model).__name__ == "OptimizedModule" or \
            hasattr(getattr(model, "forward", None), "_torchdynamo_orig_callable"):
        raise NotImplementedError(
            "ivcprune cannot hook a torch.compile'd model (compiled graphs bypass forward hooks); "
            "prune the uncompiled model"
        )
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "cache_implementation", None) == "static":
        raise NotImplementedError(
            "ivcprune cannot prune with cache_implementation='static': a fixed-size cache cannot shrink"
        )
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        raise NotImplementedError(
            f"ivcprune does not support a model split over several devices ({sorted(devices)}); load it on one device"
        )


@contextmanager
def prune(model: nn.Module, method: PruningMethod) -> Iterator[Trace]:
    """Apply ``method`` to every prefill run inside the block; the model is unchanged afterwards.

    Raises ValueError/NotImplementedError before any work for unsupported set-ups (bad layer, compiled model,
    static cache, unsupported attention backend, unknown model class).
    """
    if not isinstance(method, PruningMethod):
        raise TypeError(f"prune() expects a pruning method such as ivcprune.IVCPrune(...), got {type(method).__name__}")
    _check_model(model)
    if getattr(model, "_ivcprune_active", False):
        raise NotImplementedError(
            "prune() is already active on this model: nested or concurrent prune() blocks are not supported "
            "(leave the outer block first, or prune a second copy of the model)"
        )
    runtime = PruneRuntime(model, method, get_adapter(model))
    runtime.attach()
    model._ivcprune_active = True
    try:
        yield Trace(runtime)
    finally:
        model.__dict__.pop("_ivcprune_active", None)  # the model is left exactly as it was
        runtime.detach()
