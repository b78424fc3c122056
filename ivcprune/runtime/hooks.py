"""Forward hooks that apply a selection to a running, unmodified transformers model (docs/ALGORITHM.md §6).

H1 top-level pre-hook: starts a request at prefill; at decode, maps the 2-D mask and position ids onto the
   compact cache. H2 text-model pre-hook: records the position ids. H3 value capture at layer K-1.
H4 layer-K pre-hook: runs the selection, gathers hidden states / rotary / positions / mask, cuts the caches of
   layers < K; layers > K reuse the compact kwargs. A text-model forward hook closes the prefill.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field

import torch

from ivcprune.core.selection import ImageRecord, Selection, Stage
from ivcprune.methods.base import PruningMethod, SampleContext
from ivcprune.models.base import FamilyAdapter, RequestInputs
from ivcprune.runtime import cache as kv
from ivcprune.runtime.masks import compact_mask, decode_mask

SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2")


@dataclass
class _Request:
    """State of one armed prefill."""

    inputs: RequestInputs
    images: list[list[ImageRecord]]
    positions: torch.Tensor | None = None  # (A, B, S)
    values: torch.Tensor | None = None  # (B, S, H*D) at layer K-1
    extras: dict = field(default_factory=dict)
    compact: dict | None = None  # kwargs substituted in layers > K
    layout: tuple | None = None  # (index (B, P_max), real (B, P_max)) of the cut, once layer K has run
    residual: dict = field(default_factory=dict)  # {layer: (mask, features)} the runtime adds (adapter residual inputs)
    cache: object = None
    selection: Selection | None = None
    rows: torch.Tensor | None = None  # (B, P) absolute position of each row of the current compact layout
    stage_real: list = field(default_factory=list)  # (B, P_j) real-row masks of the stages after the first
    stage_kept: list | None = None  # per sample, per image: what the latest stage kept (multi-stage methods)


@dataclass
class _Decode:
    """What decode steps need after a cut: the compact prefill mask and the original positions."""

    cache: object
    prompt_length: int  # S
    compact_valid: torch.Tensor  # (B, P_max) long, 0 on slots
    last_position: torch.Tensor  # (B,) largest prefill position id per sample
    stage_valid: list = field(default_factory=list)  # (B, P_j) long of the stages after the first (multi-stage)

    @property
    def kept_length(self) -> int:
        return self.compact_valid.shape[1]


class PruneRuntime:
    """Owns the hooks of one ``prune(model, method)`` block and the trace of its selections."""

    def __init__(self, model, method: PruningMethod, adapter: FamilyAdapter):
        self.model = model
        self.method = method
        self.adapter = adapter
        self.schedule = list(method.schedule(adapter))  # K1 < K2 < ...: one entry unless the method is multi-stage
        self.layer = self.schedule[0]
        self._step: dict | None = None  # a decode step of a multi-stage cache: the 2-D masks of its later stages
        self.selections: list[Selection] = []
        self._handles: list = []
        self._request: _Request | None = None
        self._decode: _Decode | None = None
        self._residual_layers: list[int] = []
        impl = adapter.attn_implementation
        if impl not in SUPPORTED_ATTENTION:
            raise NotImplementedError(
                f"attention implementation '{impl}' is not supported; use one of {', '.join(SUPPORTED_ATTENTION)}"
            )

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def attach(self) -> None:
        a, k = self.adapter, self.layer
        reg = self._handles.append
        reg(self.model.register_forward_pre_hook(self._top_pre_hook, with_kwargs=True))
        reg(a.text_model.register_forward_pre_hook(self._text_pre_hook, with_kwargs=True))
        reg(a.text_model.register_forward_hook(self._text_post_hook, with_kwargs=True))
        if self.method.needs_values:
            reg(a.value_module(k - 1).register_forward_hook(self._value_hook))
        for handle in self.method.attach_captures(self):
            reg(handle)
        reg(a.layers[k].register_forward_pre_hook(self._layer_k_pre_hook, with_kwargs=True))
        # inputs the text model adds after some layers (DeepStack): taken over only when a layer >= K has one
        residual = [i for i in a.residual_input_layers() if i < a.num_layers]
        self._residual_layers = residual if any(i >= k for i in residual) else []
        for i in self._residual_layers:
            reg(a.layers[i].register_forward_hook(functools.partial(self._residual_hook, i)))
        if len(self.schedule) == 1:
            for layer in a.layers[k + 1:]:
                reg(layer.register_forward_pre_hook(self._later_layer_pre_hook, with_kwargs=True))
            return
        for i in range(k + 1, a.num_layers):  # multi-stage: group j holds the layers [K_j, K_j+1)
            group = sum(1 for s in self.schedule[1:] if s <= i)
            hook = functools.partial(self._stage_layer_pre_hook, group, i in self.schedule)
            reg(a.layers[i].register_forward_pre_hook(hook, with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._request = None
        self._decode = None
        self._step = None

    def capture(self, key: str, value) -> None:
        """Store a method-specific capture (e.g. FastV's queries/keys) for the armed prefill."""
        if self._request is not None:
            self._request.extras[key] = value

    # --- H1 ----------------------------------------------------------------------------------------------------
    def _top_pre_hook(self, module, args, kwargs):
        if kwargs.get("labels") is not None:
            raise ValueError("ivcprune.prune is for inference: remove `labels` (training is not supported)")
        cache = kwargs.get("past_key_values")
        kv.check_cache(cache)
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        q_len = tokens.shape[1] if tokens is not None else 0
        past = kv.cache_length(cache)
        self._step = None
        if past == 0:
            self._start_request(args, kwargs, q_len)
            return None
        if self._decode is not None and cache is self._decode.cache:
            if q_len > 1:
                warnings.warn("ivcprune: continuation prefill on a pruned cache passes through unpruned", stacklevel=2)
            return args, self._decode_kwargs(kwargs, past, q_len)
        return None

    def _start_request(self, args, kwargs, q_len: int) -> None:
        self._request, self._decode = None, None
        if q_len <= 1:
            return
        inputs = self.adapter.request_inputs(args, kwargs)
        if inputs is None:
            warnings.warn("ivcprune: no input_ids in this forward (inputs_embeds only): image tokens cannot be "
                          "located, passing through unpruned", stacklevel=3)
            return
        images = self.adapter.image_spans(inputs)
        if not any(images):
            self.selections.append(self._passthrough(inputs, images))
            return
        if self.method.is_identity():
            for sample in images:
                for im in sample:
                    im.kept = list(range(im.start, im.end))
            self.selections.append(self._passthrough(inputs, images))
            return
        self._request = _Request(inputs=inputs, images=images)

    def _passthrough(self, inputs: RequestInputs, images) -> Selection:
        valid = inputs.valid.cpu()
        kept = [torch.nonzero(v, as_tuple=False).flatten().tolist() for v in valid]
        return Selection(
            method=self.method.label(), layer=self.layer, num_layers=self.adapter.num_layers,
            prompt_length=int(inputs.input_ids.shape[1]), kept=kept, images=images,
            valid_length=[int(v.sum()) for v in valid], pruned=False,
            kv_bytes_per_token=self._config_bytes_per_token(),
        )

    def _decode_kwargs(self, kwargs: dict, past: int, q_len: int) -> dict:
        """Map a decode step onto the compact cache: compact 2-D mask, original position ids."""
        d = self._decode
        steps = past - d.kept_length  # tokens fed back since the prefill
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        device = d.compact_valid.device
        if mask is not None and mask.ndim == 2:
            tail = mask[:, d.prompt_length:]
            if tail.shape[1] != steps + q_len:
                raise ValueError(
                    f"ivcprune: decode attention_mask has {mask.shape[1]} columns, expected the prompt length "
                    f"{d.prompt_length} + {steps + q_len} new tokens; pass the mask that generate() would pass"
                )
            kwargs["attention_mask"] = torch.cat([d.compact_valid.to(mask.device, mask.dtype), tail], dim=1)
        elif mask is None and not bool(d.compact_valid.all()):
            ones = torch.ones(d.compact_valid.shape[0], steps + q_len, dtype=torch.long, device=device)
            kwargs["attention_mask"] = torch.cat([d.compact_valid, ones], dim=1)
        if d.stage_valid:
            tail = kwargs["attention_mask"][:, -(steps + q_len):] if kwargs.get("attention_mask") is not None else \
                torch.ones(d.compact_valid.shape[0], steps + q_len, dtype=torch.long, device=device)
            self._step = {"valid": [torch.cat([v.to(tail.device, tail.dtype), tail], dim=1) for v in d.stage_valid],
                          "masks": {}}
        if kwargs.get("position_ids") is None:
            offsets = torch.arange(q_len, device=device) + steps + 1
            kwargs["position_ids"] = self.adapter.decode_position_ids(d.last_position.to(device)[:, None] + offsets)
        return kwargs

    # --- H2 / H3 -----------------------------------------------------------------------------------------------
    def _text_pre_hook(self, module, args, kwargs):
        req = self._request
        if req is None:
            return None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = kwargs.get("input_ids", args[0] if args else None)
        batch, length = embeds.shape[0], embeds.shape[1]
        if length != req.inputs.input_ids.shape[1]:
            self._request = None  # not the prefill we armed for
            return None
        req.positions = self.adapter.positions(kwargs.get("position_ids"), batch, length, embeds.device)
        self.adapter.complete_images(req.images, req.positions)
        if self._residual_layers:
            kwargs, req.residual = self.adapter.pop_residual_inputs(kwargs)
            return args, kwargs
        return None

    def _value_hook(self, module, args, output):
        if self._request is not None and self._request.values is None:
            self._request.values = output.detach()

    # --- H4 ----------------------------------------------------------------------------------------------------
    def _layer_k_pre_hook(self, module, args, kwargs):
        req = self._request
        if req is None or req.positions is None:
            return None
        start = time.perf_counter()
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, length = hidden.shape[:2]
        keeps = self._select(req, hidden)
        index, real = _layout(keeps, hidden.device)
        gathered, compact = self._compact(kwargs, hidden, index, real)
        cache = kwargs.get("past_key_values")
        if cache is not None:
            kv.cut_layers(cache, self.layer, index)  # nothing to cut at K = 0
            req.cache = cache
        req.compact = compact
        req.layout = (index, real)
        req.rows = index
        req.selection = self._record(req, keeps, length)
        req.extras["real"] = real
        req.selection.selection_ms = (time.perf_counter() - start) * 1000.0
        new_kwargs = {**kwargs, **compact}
        if args:
            return (gathered,) + tuple(args[1:]), new_kwargs
        new_kwargs["hidden_states"] = gathered
        return args, new_kwargs

    def _compact(self, kwargs: dict, hidden: torch.Tensor, index: torch.Tensor, real: torch.Tensor):
        """Hidden states and the kwargs of the next layers at ``index`` (B, P) rows of the incoming layout."""
        batch, length = hidden.shape[:2]
        p_max = index.shape[1]
        compact = {}
        gathered = _gather_seq(hidden, index)
        emb = kwargs.get("position_embeddings")
        if emb is not None:
            compact["position_embeddings"] = tuple(_gather_seq(t, index, batch) for t in emb) \
                if isinstance(emb, (tuple, list)) else _gather_seq(emb, index, batch)
        pos = kwargs.get("position_ids")
        impl = self.adapter.attn_implementation
        has_slots = not bool(real.all())
        if impl == "flash_attention_2":
            # FA2 reads position_ids to detect packing: contiguous ids; rotary stays at the original positions
            compact["position_ids"] = torch.arange(p_max, device=hidden.device)[None].expand(batch, -1)
            compact["attention_mask"] = real.long() if has_slots else None
        else:
            if isinstance(pos, torch.Tensor) and pos.shape[-1] == length:
                compact["position_ids"] = _gather_last(pos, index)
            if kwargs.get("attention_mask") is None and not has_slots and impl == "sdpa":
                compact["attention_mask"] = None
            else:
                compact["attention_mask"] = compact_mask(real, impl, hidden.dtype)
        return gathered, compact

    def _later_layer_pre_hook(self, module, args, kwargs):
        req = self._request
        if req is None or req.compact is None:
            return None
        return args, {**kwargs, **req.compact}

    def _stage_layer_pre_hook(self, group: int, boundary: bool, module, args, kwargs):
        """Layers after K1 of a multi-stage method: a later stage's selection at its first layer (prefill), the
        compact kwargs (prefill), and at decode the mask of the group's own cache length (groups >= 1)."""
        req = self._request
        if req is not None:
            if req.compact is None:
                return None
            kwargs = {**kwargs, **req.compact}
            return self._run_stage(group, args, kwargs) if boundary else (args, kwargs)
        step = self._step
        if step is None or group == 0:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = step["masks"].get(group)
        if mask is None:
            mask = decode_mask(step["valid"][group - 1], hidden.shape[1], self.adapter.attn_implementation,
                               hidden.dtype)
            step["masks"][group] = mask
        return args, {**kwargs, "attention_mask": mask}

    def _run_stage(self, stage: int, args, kwargs):
        """Stage j >= 1 at layer K_j: narrow the kept set, gather the compact layout again (no cache is cut: the
        layers below keep their then-current tokens)."""
        req = self._request
        start = time.perf_counter()
        hidden = args[0] if args else kwargs["hidden_states"]
        keeps = self._select_stage(req, stage, hidden)
        rows = req.rows.cpu()
        real_prev = (req.stage_real[-1] if req.stage_real else req.extras["real"]).cpu()
        local = []
        for b, keep in enumerate(keeps):
            where = {int(p): r for r, (p, ok) in enumerate(zip(rows[b].tolist(), real_prev[b].tolist())) if ok}
            local.append([where[p] for p in keep])
        index, real = _layout(local, hidden.device)
        gathered, compact = self._compact(kwargs, hidden, index, real)
        req.rows = req.rows.gather(1, index.to(req.rows.device))
        req.compact = compact
        req.stage_real.append(real)
        sel = req.selection
        sel.stages.append(Stage(layer=self.schedule[stage], kept=keeps,
                                image_kept=[[list(k) for k in sample] for sample in req.stage_kept]))
        sel.selection_ms += (time.perf_counter() - start) * 1000.0
        kwargs = {**kwargs, **compact}
        if args:
            return (gathered,) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = gathered
        return args, kwargs

    def _residual_hook(self, layer_idx, module, args, output):
        """Add the adapter's residual inputs after ``layer_idx`` (as the text model would), at the kept positions
        once the sequence is cut."""
        req = self._request
        if req is None or layer_idx not in req.residual:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        mask, features = req.residual[layer_idx]
        if req.rows is not None and mask.shape[1] != hidden.shape[1]:
            # the current compact layout: absolute position of each row and its real-row mask (latest stage)
            index, real = req.rows, (req.stage_real[-1] if req.stage_real else req.extras["real"])
            mask = mask.to(index.device)
            row = (mask.flatten().cumsum(0) - 1).view(mask.shape)  # row of each masked position in ``features``
            mask = mask.gather(1, index) & real
            features = features[row.gather(1, index)[mask].to(features.device)]
        hidden = _add_at(hidden, mask, features)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    def _text_post_hook(self, module, args, kwargs, output):
        req, self._request = self._request, None
        if req is None or req.selection is None:
            return None
        sel = req.selection
        if req.cache is not None:
            sel.kv_bytes_per_token = kv.bytes_per_token(req.cache, self.adapter.num_layers)
            real = req.extras["real"]
            valid = req.inputs.valid.to(req.positions.device)
            positions = req.positions.masked_fill(~valid[None], torch.iinfo(req.positions.dtype).min)
            last = positions.amax(dim=(0, 2))
            self._decode = _Decode(cache=req.cache, prompt_length=req.inputs.input_ids.shape[1],
                                   compact_valid=real.long(), last_position=last,
                                   stage_valid=[r.long() for r in req.stage_real])
            if sel.stages:
                sel.kv_bytes_per_layer = kv.bytes_per_layer(req.cache, self.adapter.num_layers)
        else:
            sel.kv_bytes_per_token = self._config_bytes_per_token()
        self.selections.append(sel)
        return None

    # --- selection ---------------------------------------------------------------------------------------------
    def _select(self, req: _Request, hidden: torch.Tensor | None = None) -> list[list[int]]:
        values = None
        if self.method.needs_values:
            if req.values is None:
                raise RuntimeError("ivcprune: layer K-1 values were not captured during the prefill")
            values = self.adapter.value_heads(req.values)
        inv_freq = self.adapter.inv_freq()
        settings = self.method.family_defaults(self.adapter)
        keeps = []
        for b, images in enumerate(req.images):
            valid = req.inputs.valid[b].cpu()
            ctx = SampleContext(
                index=b, valid=valid, positions=req.positions[:, b].cpu(), images=images, inv_freq=inv_freq,
                settings=settings, adapter=self.adapter,
                values=None if values is None else values[b], extras=req.extras,
                hidden=hidden[b] if hidden is not None and "hidden" in self.method.captures else None,
            )
            for image in images:
                self.method.select_image(ctx, image)
            keep = set(ctx.text_positions().tolist())
            for image in images:
                keep.update(image.kept)
            keeps.append(sorted(keep))
        req.stage_kept = [[list(im.kept) for im in images] for images in req.images]
        return keeps

    def _select_stage(self, req: _Request, stage: int, hidden: torch.Tensor) -> list[list[int]]:
        """Stage ``stage`` >= 1: each image narrowed from what the previous stage kept of it."""
        inv_freq = self.adapter.inv_freq()
        settings = self.method.family_defaults(self.adapter)
        real = req.stage_real[-1] if req.stage_real else req.extras["real"]
        keeps, stage_kept = [], []
        for b, images in enumerate(req.images):
            rows = req.rows[b].cpu().masked_fill(~real[b].cpu(), -1)
            ctx = SampleContext(
                index=b, valid=req.inputs.valid[b].cpu(), positions=req.positions[:, b].cpu(), images=images,
                inv_freq=inv_freq, settings=settings, adapter=self.adapter, extras=req.extras, rows=rows, stage=stage,
                hidden=hidden[b] if "hidden" in self.method.captures else None,
            )
            kept = []
            for image, current in zip(images, req.stage_kept[b]):
                new = sorted(int(p) for p in self.method.select_stage(ctx, image, current))
                if not set(new) <= set(current):
                    raise RuntimeError(f"{self.method.label()}: stage {stage} kept tokens the previous stage dropped")
                kept.append(new)
            keep = set(ctx.text_positions().tolist())
            for k in kept:
                keep.update(k)
            keeps.append(sorted(keep))
            stage_kept.append(kept)
        req.stage_kept = stage_kept
        return keeps

    def _record(self, req: _Request, keeps: list[list[int]], length: int) -> Selection:
        valid = req.inputs.valid
        return Selection(
            method=self.method.label(), layer=self.layer, num_layers=self.adapter.num_layers,
            prompt_length=int(length), kept=keeps, images=req.images,
            valid_length=[int(v) for v in valid.sum(dim=1).tolist()],
        )

    def _config_bytes_per_token(self) -> int:
        return self.adapter.kv_bytes_per_token()


def _add_at(hidden: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """hidden with ``features`` added at the (B, S) ``mask`` rows, computed as the text model does (bitwise)."""
    mask = mask.to(hidden.device)
    hidden = hidden.clone()
    hidden[mask, :] = hidden[mask, :] + features.to(hidden.device, hidden.dtype)
    return hidden


def _layout(keeps: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned compact layout: (B, P_max) indices (slots repeat the first kept index) and the real-row mask."""
    p_max = max(len(k) for k in keeps)
    index = torch.empty(len(keeps), p_max, dtype=torch.long)
    real = torch.zeros(len(keeps), p_max, dtype=torch.bool)
    for b, keep in enumerate(keeps):
        pad = p_max - len(keep)
        index[b, :pad] = keep[0]
        index[b, pad:] = torch.tensor(keep, dtype=torch.long)
        real[b, pad:] = True
    return index.to(device), real.to(device)


def _gather_seq(tensor: torch.Tensor, index: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Gather (B, S, ...) along dim 1 at index (B, P); a batch-1 tensor is broadcast first."""
    if batch is not None and tensor.shape[0] == 1 and index.shape[0] > 1:
        tensor = tensor.expand(index.shape[0], *tensor.shape[1:])
    idx = index.to(tensor.device)
    idx = idx.view(*idx.shape, *([1] * (tensor.ndim - 2))).expand(*idx.shape, *tensor.shape[2:])
    return tensor.gather(1, idx)


def _gather_last(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather (..., B, S) position ids along the last dim at index (B, P)."""
    idx = index.to(tensor.device)
    if tensor.ndim == 2:
        return tensor.expand(idx.shape[0], -1).gather(1, idx) if tensor.shape[0] == 1 else tensor.gather(1, idx)
    lead = tensor.shape[0]
    t = tensor.expand(lead, idx.shape[0], -1) if tensor.shape[1] == 1 else tensor
    return t.gather(2, idx[None].expand(lead, -1, -1))
