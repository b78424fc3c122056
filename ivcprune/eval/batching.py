"""Batched evaluation (issue 13): grouping a rank's rows into padded batches and running them with per-row outcomes.

The pruning runtime prunes a left-padded batch exactly, each sample as if alone, so the harness may generate
several rows in one ``generate`` call. This module holds what the runner needs for that and nothing
model-specific:

* ``RowOutput``: one row's outcome of a batched call (text and stats, or the error that made it a miss);
* ``windows`` / ``group``: the rows of a rank's shard taken in windows of ``WINDOW_BATCHES`` batches, sorted
  inside a window by the size of what the model will see (``model.input_size`` of every image, then the prompt
  text length) so that the padding of a batch stays small; with batch size 1 the order is the file order;
* ``run_batch``: one call of ``model.generate_batch``; a row that fails on its own (an image the processor
  rejects, a prompt too long) is that row's miss, and an exception from ``generate`` itself (e.g. out of memory)
  retries the batch row by row once before the rows that still fail are counted as misses.

Models without ``generate_batch`` (custom ``loader:`` entries) run row by row through ``generate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WINDOW_BATCHES = 16  # rows of a rank's shard are sorted by size within windows of this many batches


@dataclass
class RowOutput:
    """One row's outcome: ``text`` and ``stats`` when it was answered, ``error`` when it is a miss; ``tokens``: the
    generated ids up to the end of the answer, when the model reports them."""

    text: str | None = None
    stats: dict = field(default_factory=dict)
    error: BaseException | None = None
    tokens: list[int] | None = None


def batch_size_of(cli_value: int | None, entry) -> int:
    """``--batch-size`` wins over the registry's ``generation.batch_size``; the default is 1."""
    if cli_value is not None:
        return int(cli_value)
    gen = entry.get("generation") or {}
    return int(gen.get("batch_size") or 1) if isinstance(gen, dict) else 1


def windows(items: list, batch_size: int) -> list[list]:
    """Consecutive windows of ``WINDOW_BATCHES * batch_size`` items (one item each at batch size 1)."""
    size = max(1, batch_size) * (WINDOW_BATCHES if batch_size > 1 else 1)
    return [items[k:k + size] for k in range(0, len(items), size)]


def size_key(model, parts) -> tuple:
    """What decides a row's padded length: the pixels the vision encoder sees per image, then the text length."""
    fn = getattr(model, "input_size", None)
    pixels = []
    for kind, value in parts:
        if kind == "image":
            w, h = value.size
            if callable(fn):
                try:
                    w, h = fn(w, h)
                except Exception:  # noqa: BLE001 - only an ordering hint; the row itself reports its error
                    pass
            pixels.append(int(w) * int(h))
    text = sum(len(value) for kind, value in parts if kind == "text")
    return (len(pixels), sum(pixels), text)


def group(items: list, batch_size: int, key=None) -> list[list]:
    """Batches of at most ``batch_size`` items; sorted by ``key`` first (stable, so ties keep file order)."""
    ordered = sorted(items, key=key) if (key is not None and batch_size > 1) else list(items)
    return [ordered[k:k + batch_size] for k in range(0, len(ordered), max(1, batch_size))]


def _empty_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _timed(outputs: list[RowOutput], started: float, rows: int) -> list[RowOutput]:
    """Add the batch's wall time (inputs, generate, decoding) and its row count to every answered row."""
    wall = round((time.perf_counter() - started) * 1000.0, 3)
    for out in outputs:
        if out.error is None:
            out.stats = {**out.stats, "batch_size": rows, "batch_ms": wall}
    return outputs


def _one_by_one(model, batch: list, dataset) -> list[RowOutput]:
    """Models with only the single-row interface: ``generate`` per row, ``last_stats`` after each."""
    outputs = []
    for parts in batch:
        started = time.perf_counter()
        try:
            text = model.generate(parts, dataset)
        except Exception as err:  # noqa: BLE001 - recorded as the row's miss
            _empty_cache()
            outputs.append(RowOutput(error=err))
            continue
        out = RowOutput(text="" if text is None else str(text), stats=dict(getattr(model, "last_stats", None) or {}))
        outputs.extend(_timed([out], started, 1))
    return outputs


def _call(model, batch: list, dataset) -> list[RowOutput]:
    started = time.perf_counter()
    outputs = list(model.generate_batch(batch, dataset))
    if len(outputs) != len(batch):
        raise RuntimeError(f"generate_batch returned {len(outputs)} outputs for {len(batch)} rows")
    return _timed(outputs, started, len(batch))


def run_batch(model, batch: list, dataset) -> list[RowOutput]:
    """Generate every row of ``batch`` (a list of prompt parts); one ``RowOutput`` per row, in order."""
    if not batch:
        return []
    if not callable(getattr(model, "generate_batch", None)):
        return _one_by_one(model, batch, dataset)
    try:
        return _call(model, batch, dataset)
    except Exception as err:  # noqa: BLE001 - generate itself failed (e.g. out of memory)
        _empty_cache()
        if len(batch) == 1:
            return [RowOutput(error=err)]
    outputs = []
    for parts in batch:  # once more, row by row: a batch that did not fit may fit one row at a time
        try:
            outputs.extend(_call(model, [parts], dataset))
        except Exception as err:  # noqa: BLE001 - this row alone fails too: a counted miss
            _empty_cache()
            outputs.append(RowOutput(error=err))
    return outputs


def _without(container: dict, name: str, key: str) -> None:
    """Drop ``container[name][key]``, and ``container[name]`` itself when that leaves it empty."""
    inner = container.get(name)
    if isinstance(inner, dict) and key in inner:
        inner.pop(key)
        if not inner:
            container.pop(name)


def fingerprint_entry(entry):
    """The entry as the resume fingerprint sees it: without ``generation.batch_size``, which changes how rows are
    grouped, not what they answer, so a run may resume at another batch size."""
    import copy
    import dataclasses

    settings, overrides = copy.deepcopy(entry.settings), copy.deepcopy(entry.overrides)
    _without(settings, "generation", "batch_size")
    _without(overrides, "set", "generation.batch_size")
    return dataclasses.replace(entry, settings=settings, overrides=overrides)
