"""Building blocks of `ivcp bench`: real-shaped random models, hand-built inputs, timers, memory, FLOPs.

Inputs are built from the model config alone (token ids, grid, pixel tensor), so a synthetic 7B-shaped model needs
no processor or tokenizer, and the same code drives a real checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time
from dataclasses import dataclass

import torch

import ivcprune
from ivcprune.models.qwen2_vl import mrope_section
from ivcprune.models.qwen3_vl import interleaved_section


@dataclass(frozen=True)
class Shape:
    """The text-model shape of a real checkpoint (plus its default K and image-token count)."""

    family: str  # "qwen2_5_vl" | "qwen3_vl" | "llava"
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    theta: float
    image_tokens: int
    layer: int  # K of the full-depth model
    cpu_width: float = 1.0  # default width scale on CPU
    cpu_layers: int | None = None  # default depth on CPU

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim


SHAPES = {
    "quick": Shape("qwen2_5_vl", heads=8, kv_heads=2, head_dim=64, intermediate=1376, layers=8, vocab=2048,
                   theta=1e6, image_tokens=1024, layer=2),
    "qwen2.5-vl-7b": Shape("qwen2_5_vl", heads=28, kv_heads=4, head_dim=128, intermediate=18944, layers=28,
                           vocab=152064, theta=1e6, image_tokens=1024, layer=16, cpu_width=0.25, cpu_layers=8),
    # Qwen3-VL-8B: 36 layers, K = 21 = round(36 * 16 / 28) (untuned), interleaved M-RoPE, theta 5e6, DeepStack
    "qwen3-vl-8b": Shape("qwen3_vl", heads=32, kv_heads=8, head_dim=128, intermediate=12288, layers=36,
                         vocab=151936, theta=5e6, image_tokens=1024, layer=21, cpu_width=0.25, cpu_layers=8),
    "llava-1.5-7b": Shape("llava", heads=32, kv_heads=32, head_dim=128, intermediate=11008, layers=32, vocab=32064,
                          theta=1e4, image_tokens=576, layer=16, cpu_width=0.25, cpu_layers=8),
}

PREFIX_TOKENS, QUESTION_TOKENS, SUFFIX_TOKENS = 14, 24, 5  # a chat-template-sized prompt around the image


def scaled(shape: Shape, width: float, layers: int) -> Shape:
    """The shape at ``width`` (heads, KV heads and MLP scaled; head_dim kept) and ``layers`` deep."""
    heads = max(1, round(shape.heads * width))
    kv = max(1, round(shape.kv_heads * width))
    while heads % kv:
        kv -= 1
    return Shape(shape.family, heads=heads, kv_heads=kv, head_dim=shape.head_dim,
                 intermediate=max(1, round(shape.intermediate * width)), layers=layers, vocab=shape.vocab,
                 theta=shape.theta, image_tokens=shape.image_tokens, layer=shape.layer)


def scaled_layer(shape: Shape, layers: int) -> int:
    """K at reduced depth: the full model's K/N_L proportion, clamped to [1, layers - 1]."""
    k = round(shape.layer * layers / shape.layers) if layers != shape.layers else shape.layer
    return min(max(1, k), layers - 1)


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise SystemExit(f"ivcp bench: unknown --dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------- models
def _special_ids(vocab: int) -> dict:
    """Image/vision ids at the top of a synthetic vocabulary (text ids stay below them)."""
    return {"image": vocab - 1, "video": vocab - 2, "start": vocab - 3, "end": vocab - 4, "eos": vocab - 5}


def synthetic_model(shape: Shape, dtype: torch.dtype, attn: str, seed: int = 0):
    """A randomly initialised model of ``shape`` with a one-block vision tower (the LM is what is measured)."""
    import transformers as tf

    torch.manual_seed(seed)
    ids = _special_ids(shape.vocab)
    text = dict(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                max_position_embeddings=32768, tie_word_embeddings=False, eos_token_id=ids["eos"],
                pad_token_id=ids["eos"], bos_token_id=ids["eos"])
    if shape.family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.theta,
                                   "mrope_section": mrope_section(shape.head_dim)}
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=shape.hidden,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[0])
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                                     video_token_id=ids["video"], vision_start_token_id=ids["start"],
                                     vision_end_token_id=ids["end"], tie_word_embeddings=False)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    elif shape.family == "qwen3_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.theta, "mrope_interleaved": True,
                                   "mrope_section": interleaved_section(shape.head_dim // 2)}
        text["head_dim"] = shape.head_dim
        # three one-block DeepStack taps, as the release adds three feature levels after decoder layers 0-2
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=shape.hidden,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1, 2])
        config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                                  video_token_id=ids["video"], vision_start_token_id=ids["start"],
                                  vision_end_token_id=ids["end"], tie_word_embeddings=False)
        cls = tf.Qwen3VLForConditionalGeneration
    elif shape.family == "llava":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.theta}
        text["head_dim"] = shape.head_dim
        side = math.isqrt(shape.image_tokens)
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=side * 14, patch_size=14, projection_dim=32)
        config = tf.LlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**text), image_token_id=ids["image"],
                                projector_hidden_act="gelu", vision_feature_select_strategy="default",
                                vision_feature_layer=-2, image_seq_length=shape.image_tokens,
                                tie_word_embeddings=False)
        cls = tf.LlavaForConditionalGeneration
    else:
        raise ValueError(f"no synthetic builder for family {shape.family!r}")
    model = cls._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.eval()


def family_of(model) -> str:
    name = type(model).__name__
    if name.startswith(("Qwen2", "Qwen3VL")):  # one M-RoPE prompt layout for Qwen2, 2.5 and 3 (dense, MoE)
        return "qwen2_5_vl"
    if name.startswith("Llava"):
        return "llava"
    raise SystemExit(f"ivcp bench: no input builder for {name}; supported: Qwen2/2.5/3-VL, LLaVA")


def build_inputs(model, image_tokens: int, seed: int = 0) -> dict:
    """A one-image prompt built from the config: prefix text, the image span, a question and a template suffix."""
    cfg = model.config
    vocab = cfg.get_text_config().vocab_size
    image_id = cfg.image_token_id
    gen = torch.Generator().manual_seed(seed)
    low = min(1000, min(image_id, vocab) - 8)

    def text(n):
        return torch.randint(3, low, (n,), generator=gen)

    family = family_of(model)
    if family == "qwen2_5_vl":
        side = math.isqrt(image_tokens)
        if side * side != image_tokens:
            raise SystemExit(f"ivcp bench: Qwen image tokens must be a square grid, got {image_tokens}")
        merge = cfg.vision_config.spatial_merge_size
        span = torch.cat([torch.tensor([cfg.vision_start_token_id]), torch.full((image_tokens,), image_id),
                          torch.tensor([cfg.vision_end_token_id])])
        ids = torch.cat([text(PREFIX_TOKENS), span, text(QUESTION_TOKENS + SUFFIX_TOKENS)])[None]
        grid = torch.tensor([[1, side * merge, side * merge]])
        vc = cfg.vision_config
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        pixels = torch.randn(int(grid.prod()), patch_dim, generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
                "image_grid_thw": grid, "mm_token_type_ids": (ids == image_id).int()}
    side = cfg.vision_config.image_size
    ids = torch.cat([text(PREFIX_TOKENS + 20), torch.full((image_tokens,), image_id),
                     text(QUESTION_TOKENS + SUFFIX_TOKENS)])[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, side, side, generator=gen)}


def load_checkpoint(path: str, dtype: torch.dtype, attn: str):
    from ivcprune.models.loading import checkpoint_model_type, load_vl_model

    supported = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "llava")  # what build_inputs can prompt
    model_type = checkpoint_model_type(path)
    if model_type not in supported:
        raise SystemExit(f"ivcp bench: checkpoint model_type {model_type!r} is not supported by the bench "
                         f"(supported: {sorted(supported)})")
    return load_vl_model(path, dtype=dtype, attn=attn)


# --------------------------------------------------------------------------------------------- bundle
@dataclass
class Bundle:
    name: str
    shape_info: str
    model: object
    inputs: dict
    layer: int
    attn: str
    flop_model: dict
    element_size: int
    prompt_length: int
    image_tokens: int
    device: torch.device


def text_model(model):
    return model.model.language_model


def vision_module(model):
    inner = model.model
    return getattr(inner, "visual", None) or getattr(inner, "vision_tower", None)


def load_bundle(args, device: torch.device, dtype: torch.dtype) -> Bundle:
    """The model, its inputs and K from the CLI arguments (synthetic shape, checkpoint or registry entry)."""
    cpu = device.type == "cpu"
    if args.synthetic:
        base = SHAPES[args.synthetic]
        layers = args.layers or (base.cpu_layers if cpu and base.cpu_layers else base.layers)
        width = args.width if args.width is not None else (base.cpu_width if cpu else 1.0)
        shape = scaled(base, width, layers)
        if args.image_tokens:
            shape = Shape(**{**shape.__dict__, "image_tokens": args.image_tokens})
        model = synthetic_model(shape, dtype, args.attn, args.seed)
        layer = args.layer or scaled_layer(base, layers)
        name = f"synthetic {args.synthetic}"
        info = (f"random weights, {layers}/{base.layers} layers, width x{width:g} (hidden {shape.hidden}, "
                f"heads {shape.heads}/{shape.kv_heads} kv, head_dim {shape.head_dim}, MLP {shape.intermediate})")
        image_tokens = shape.image_tokens
    else:
        path = args.checkpoint
        name = path
        if args.model:
            from ivcprune.eval.registry import resolve

            entry = resolve(args.model)
            path, name = entry.checkpoint, args.model
        model = load_checkpoint(path, dtype, args.attn)
        n_layers = len(text_model(model).layers)
        layer = args.layer or ivcprune.IVCPrune().resolve_layer(ivcprune.models.get_adapter(model))
        info = f"checkpoint {path}, {n_layers} layers"
        image_tokens = args.image_tokens or 1024
        if family_of(model) == "llava":  # fixed by the vision tower: one token per patch (CLS dropped)
            vc = model.config.vision_config
            image_tokens = (vc.image_size // vc.patch_size) ** 2
    model = model.to(device)
    inputs = {k: v.to(device) for k, v in build_inputs(model, image_tokens, args.seed).items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return Bundle(name=name, shape_info=info, model=model, inputs=inputs, layer=layer, attn=args.attn,
                  flop_model=flop_model(model), element_size=torch.empty((), dtype=dtype).element_size(),
                  prompt_length=int(inputs["input_ids"].shape[1]), image_tokens=image_tokens, device=device)


# --------------------------------------------------------------------------------------------- accounting
def flop_model(model) -> dict:
    """c1 = 2 x the weights a token touches per layer (the matrices of decoder layer 0; of a routed expert block
    only the top-k share, num_experts_per_tok / num_experts), c2 = H (D_qk + D_v)."""
    lm = text_model(model)
    cfg = lm.config
    active = getattr(cfg, "num_experts_per_tok", None) / cfg.num_experts if getattr(cfg, "num_experts", 0) else 1.0
    weights = round(sum(p.numel() * (active if ".experts." in f".{name}" else 1.0)
                        for name, p in lm.layers[0].named_parameters() if p.ndim >= 2))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"c1": 2 * weights, "c2": cfg.num_attention_heads * 2 * head_dim, "num_layers": len(lm.layers),
            "kv_heads": cfg.num_key_value_heads, "head_dim": head_dim, "weights_per_layer": weights}


def prefill_flops(fm: dict, s: int, p: int, k: int, pruned: bool = True, stages=()) -> dict:
    """Ideal prefill FLOPs N_L f(S) and K f(S) + (N_L - K) f(P) (docs/ALGORITHM.md §8).

    ``stages``: the later stages of a multi-stage selection as (K_j, P_j): layers [K_j, K_j+1) run on P_j tokens.
    """
    def f(n):
        return fm["c1"] * n + fm["c2"] * n * n

    n_layers = fm["num_layers"]
    full = n_layers * f(s)
    bounds = [(k, p), *stages]
    ends = [layer for layer, _ in bounds[1:]] + [n_layers]
    staged = k * f(s) + sum((end - layer) * f(count) for (layer, count), end in zip(bounds, ends))
    return {"full": full, "pruned": staged if pruned else full}


def analytic_kv_bytes(fm: dict, tokens: int, element_size: int) -> int:
    """2 H_kv D bytes per token per layer, over every layer."""
    return 2 * fm["kv_heads"] * fm["head_dim"] * element_size * fm["num_layers"] * tokens


def cache_bytes(cache) -> int:
    """Bytes held by a live cache (every per-token tensor of every layer)."""
    from ivcprune.runtime import cache as kv

    return sum(t.numel() * t.element_size() for layer in cache.layers for _, t in kv.layer_tensors(layer))


# --------------------------------------------------------------------------------------------- memory
def isolate_cpu_allocations(device: torch.device) -> None:
    """Before the memory pass on Linux CPU: large allocations use mmap, so freed memory leaves the RSS at once.

    Without it glibc reuses freed heap memory and RSS peaks say little; it is set only after the timing runs
    because page-faulting fresh mmaps slows every forward.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic growth)
        libc.malloc_trim(0)  # hand back what the timing runs left in the heap, or it leaves the RSS mid-pass


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory above the pre-request baseline: CUDA max_memory_allocated, or the Linux RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self._reset_hwm()
            self.base = _status_kib("VmRSS") or 0

    def peak_mib(self, reset: bool = False) -> float | None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
            if reset:
                torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        hwm = _status_kib("VmHWM")
        if reset:
            self._reset_hwm()
        return None if hwm is None else (hwm - self.base) / 1024

    @staticmethod
    def _reset_hwm() -> None:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")


# --------------------------------------------------------------------------------------------- timing
class CallTimer:
    """Wall time of every forward call of a module (synchronising CUDA at both ends)."""

    def __init__(self, module, device: torch.device, on_end=None):
        self.spans: list[float] = []
        self._t0 = 0.0
        self._sync = device.type == "cuda"
        self._on_end = on_end
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre(self, module, args):
        self._t0 = self._now()

    def _post(self, module, args, output):
        self.spans.append((self._now() - self._t0) * 1000.0)
        if self._on_end is not None:
            self._on_end(len(self.spans) - 1, output)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def measure_once(bundle: Bundle, method, decode_tokens: int = 0, memory: bool = False) -> dict:
    """One request: prefill (and T decode steps when decode_tokens > 0) with timers and KV bytes.

    ``memory=True`` also reads peak memory (prefill, then decode, reset in between); timing runs leave it off.
    """
    model, device = bundle.model, bundle.device
    probe = MemoryProbe(device) if memory else None
    seen = {"kv": None, "peak_prefill": None}

    def after_top(call, output):
        if call == 0:
            seen["peak_prefill"] = probe.peak_mib(reset=True) if probe else None
            cache = getattr(output, "past_key_values", None)
            seen["kv"] = cache_bytes(cache) if cache is not None else None

    top = CallTimer(model, device, after_top)
    text = CallTimer(text_model(model), device)
    vision_mod = vision_module(model)
    vision = CallTimer(vision_mod, device) if vision_mod is not None else None
    ctx = ivcprune.prune(model, method) if method is not None else contextlib.nullcontext()
    try:
        if probe:
            probe.start()
        with ctx as trace:
            if decode_tokens > 0:
                model.generate(**bundle.inputs, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
                               do_sample=False, pad_token_id=model.config.get_text_config().eos_token_id)
            else:
                model(**bundle.inputs, use_cache=True, logits_to_keep=1)
        peak_decode = probe.peak_mib() if probe and decode_tokens > 0 else None
    finally:
        for t in (top, text, vision):
            if t is not None:
                t.remove()
    selection = trace.last.summary() if method is not None and trace.last is not None and trace.last.pruned else None
    steps = top.spans[1:]  # decode forwards: steps 2..T
    return {
        "text_ms": text.spans[0],
        "total_ms": top.spans[0],
        "vision_ms": vision.spans[0] if vision is not None and vision.spans else None,
        "decode_ms_per_token": _median(steps) if steps else None,
        "peak_prefill_mib": seen["peak_prefill"],
        "peak_decode_mib": peak_decode,
        "kv_bytes": seen["kv"],
        "selection": selection,
    }


def _median(values):
    values = sorted(values)
    n = len(values)
    return None if not n else (values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2]))
