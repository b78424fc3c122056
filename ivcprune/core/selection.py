"""The selection record: what one pruned prefill kept, and the accounting every report reads.

One record flows from the runtime to the harness, the benchmark and the visualizer; nothing downstream
recomputes what it says (docs/ARCHITECTURE.md §7, rule 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageRecord:
    """One image of one sample: its span in the prompt and what was kept of it."""

    start: int  # absolute index a of the first image token
    length: int  # L, number of image tokens
    grid: tuple[int, ...] | None = None  # (h, w) merged grid, tiles, or family layout; None when unknown
    kept: list[int] = field(default_factory=list)  # kept absolute positions inside [start, start + length)
    ivc_cos: list[int] = field(default_factory=list)
    ivc_sin: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    foreground: list[int] = field(default_factory=list)  # fill tokens chosen by the foreground score F

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def ivc(self) -> list[int]:
        return sorted(set(self.ivc_cos) | set(self.ivc_sin))


@dataclass
class Stage:
    """One later stage of a multi-stage selection: from ``layer`` on, sample b holds only ``kept[b]``."""

    layer: int
    kept: list[list[int]]  # per sample: every kept prompt position (text included) from ``layer`` on
    image_kept: list[list[list[int]]] = field(default_factory=list)  # per sample, per image: the kept image tokens


@dataclass
class Selection:
    """One record per pruned prefill (one request, B samples).

    ``kept[b]``, ``ivc[b]`` and ``seeds[b]`` are sorted lists of absolute prompt indices of sample b (indices
    into the padded input, so ``input_ids[b, kept[b]]`` are the kept tokens).
    """

    method: str
    layer: int  # K: first layer that sees only kept tokens
    num_layers: int
    prompt_length: int  # S, padded prefill length
    kept: list[list[int]]
    images: list[list[ImageRecord]]  # per sample, per image
    valid_length: list[int]  # S_b: non-padding prompt tokens per sample
    kv_bytes_per_token: int = 0  # sum over layers of bytes per cached token (live tensors)
    selection_ms: float = 0.0  # time spent in the layer-K hook (selection + gathers + cache cut)
    pruned: bool = True  # False when the request passed through (retention 1.0, no image, continuation)
    # multi-stage methods (docs/ARCHITECTURE.md §5): the stages after the first, each narrowing the previous kept
    # set; empty for single-stage methods, whose one stage is the record's own layer / kept.
    stages: list[Stage] = field(default_factory=list)
    kv_bytes_per_layer: list[int] = field(default_factory=list)  # beta_l per layer (filled for multi-stage records)

    @property
    def batch_size(self) -> int:
        return len(self.kept)

    @property
    def ivc(self) -> list[list[int]]:
        return [sorted({i for im in ims for i in im.ivc}) for ims in self.images]

    @property
    def seeds(self) -> list[list[int]]:
        return [sorted({i for im in ims for i in im.seeds}) for ims in self.images]

    @property
    def kept_count(self) -> list[int]:
        """P_b: kept prompt tokens per sample."""
        return [len(k) for k in self.kept]

    @property
    def max_kept(self) -> int:
        """P_max: the compact prompt length every layer holds after the cut."""
        return max(self.kept_count) if self.kept else 0

    @property
    def image_tokens(self) -> list[int]:
        return [sum(im.length for im in ims) for ims in self.images]

    @property
    def kept_image_tokens(self) -> list[int]:
        return [sum(len(im.kept) for im in ims) for ims in self.images]

    @property
    def schedule(self) -> list[tuple[int, list[list[int]]]]:
        """Every stage as (layer, kept per sample), the record's own layer / kept first."""
        return [(self.layer, self.kept)] + [(st.layer, st.kept) for st in self.stages]

    @property
    def final_kept(self) -> list[list[int]]:
        """What the last stage keeps: the rows of the text model's output."""
        return self.stages[-1].kept if self.stages else self.kept

    def cache_counts(self, b: int) -> list[int]:
        """Prompt tokens of sample b in each layer's KV cache: layers below the second stage hold the first stage's
        kept set (the first stage cuts the layers below it), layers in [K_j, K_j+1) for j >= 2 hold stage j's."""
        counts = [len(self.kept[b])] * self.num_layers
        for st in self.stages:
            counts[st.layer:] = [len(st.kept[b])] * (self.num_layers - st.layer)
        return counts

    def _layer_bytes(self) -> list[float]:
        if len(self.kv_bytes_per_layer) == self.num_layers:
            return [float(x) for x in self.kv_bytes_per_layer]
        return [self.kv_bytes_per_token / max(1, self.num_layers)] * self.num_layers

    @property
    def kv_bytes_full(self) -> list[int]:
        """Logical KV-cache bytes of each sample's prompt without pruning (all layers)."""
        return [s * self.kv_bytes_per_token for s in self.valid_length]

    @property
    def kv_bytes_kept(self) -> list[int]:
        """Logical KV-cache bytes of each sample's kept prompt (all layers; per layer as the stages say)."""
        if self.stages:
            beta = self._layer_bytes()
            return [round(sum(n * x for n, x in zip(self.cache_counts(b), beta))) for b in range(self.batch_size)]
        return [p * self.kv_bytes_per_token for p in self.kept_count]

    @property
    def kv_bytes_saved_physical(self) -> int:
        """Bytes the batch cache really shrank by: B * (S - P_max) * sum_l beta_l (slots included)."""
        if self.stages:
            beta = self._layer_bytes()
            lengths = [max(col) for col in zip(*(self.cache_counts(b) for b in range(self.batch_size)))]
            return round(self.batch_size * sum((self.prompt_length - n) * x for n, x in zip(lengths, beta)))
        return self.batch_size * (self.prompt_length - self.max_kept) * self.kv_bytes_per_token

    def summary(self) -> dict:
        """Plain numbers for reports (JSON-serialisable)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "prompt_length": self.prompt_length,
            "valid_length": list(self.valid_length),
            "kept_count": self.kept_count,
            "image_tokens": self.image_tokens,
            "kept_image_tokens": self.kept_image_tokens,
            "kv_bytes_full": self.kv_bytes_full,
            "kv_bytes_kept": self.kv_bytes_kept,
            "kv_bytes_saved_physical": self.kv_bytes_saved_physical,
            "selection_ms": self.selection_ms,
            "pruned": self.pruned,
            **({"stages": [{"layer": layer, "kept_count": [len(k) for k in kept]} for layer, kept in self.schedule]}
               if self.stages else {}),
        }
