"""Preflight: every setting that would break every row is refused before the first row runs (issue 10).

Three moments, each with its own exit path:

* ``check_entry`` (before anything loads; a usage error, exit 2): generation settings, pruning numbers, pixel
  budgets, ``box_scale``.
* ``check_dataset`` (when a pair opens; the pair fails): the columns and answer formats scoring needs, such as
  MCQ answers that are one of the row's option letters and Y/N answers that are ``Yes``/``No``.
* ``check_checkpoint`` (before loading) and ``check_model`` (right after loading; the model's pairs fail): the
  checkpoint folder exists, the checkpoint's class is the entry's family, K lies within the depth and the
  pruning runtime accepts the model, the generation budget fits the model's positions.

``check_prompt_length`` is the per-row guard the wrappers call: a prompt longer than the model's maximum
position is a counted miss with a clear message, never a silent run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

GENERATION_KEYS = ("max_new_tokens", "batch_size")  # decoding is greedy (HARNESS §1); nothing else is read
_LISTED = 10


class PreflightError(RuntimeError):
    """A setting, dataset or checkpoint that cannot give a valid result; the message says what to change."""


class PromptTooLong(ValueError):
    """One row's prompt does not fit the model's positions (a counted miss, the model is not run)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


# --------------------------------------------------------------------------------------------- registry entry
def check_entry(entry) -> None:
    """Settings wrong for every checkpoint; raises PreflightError naming the key and the value."""
    name = entry.name
    gen = entry.get("generation")
    if gen is not None and not isinstance(gen, dict):
        raise PreflightError(f"{name}: generation must be a mapping such as {{max_new_tokens: 512}}, got {gen!r}")
    gen = gen or {}
    unknown = sorted(set(gen) - set(GENERATION_KEYS))
    if unknown:
        raise PreflightError(f"{name}: generation.{unknown[0]} is not used (decoding is greedy; the only generation "
                             f"settings are max_new_tokens and batch_size), so it would be silently ignored")
    if "max_new_tokens" in gen and not (_is_int(gen["max_new_tokens"]) and gen["max_new_tokens"] >= 1):
        raise PreflightError(f"{name}: generation.max_new_tokens must be an integer >= 1, got "
                             f"{gen['max_new_tokens']!r} (0 would make every answer empty)")
    if "batch_size" in gen and not (_is_int(gen["batch_size"]) and gen["batch_size"] >= 1):
        raise PreflightError(f"{name}: generation.batch_size must be an integer >= 1 (rows per generate call), got "
                             f"{gen['batch_size']!r}")
    pruning = entry.pruning
    if pruning is not None:
        if not isinstance(pruning, dict):
            raise PreflightError(f"{name}: pruning must be a mapping such as {{method: ivcp, layer: 16}}, got "
                                 f"{pruning!r}")
        layer, retention = pruning.get("layer"), pruning.get("retention")
        if layer is not None and not (_is_int(layer) and layer >= 1):
            raise PreflightError(f"{name}: pruning.layer must be an integer >= 1, got {layer!r}")
        if retention is not None and not (_is_num(retention) and 0 < retention <= 1):
            raise PreflightError(f"{name}: pruning.retention must be in (0, 1], got {retention!r}")
    for key in ("min_pixels", "max_pixels", "max_tiles"):
        v = entry.get(key)
        if v is not None and not (_is_int(v) and v >= 1):
            raise PreflightError(f"{name}: {key} must be a positive integer, got {v!r}")
    lo, hi = entry.get("min_pixels"), entry.get("max_pixels")
    if _is_int(lo) and _is_int(hi) and lo > hi:
        raise PreflightError(f"{name}: min_pixels {lo} is larger than max_pixels {hi}")
    scale = entry.get("box_scale")
    if scale is not None and not (_is_num(scale) and scale > 0):
        raise PreflightError(f"{name}: box_scale must be a positive number, got {scale!r}")


# --------------------------------------------------------------------------------------------- dataset
def _rows(df, mask, why) -> str:
    bad = [i for i, b in enumerate(mask) if b]
    shown = "; ".join(f"row {i + 1} (index {df['index'].iat[i]}): {why(i)}" for i in bad[:_LISTED])
    return shown + (f" (+{len(bad) - _LISTED} more)" if len(bad) > _LISTED else "")


def check_dataset(ds, mode: str = "all") -> None:
    """The columns and answer formats scoring needs; under ``--mode infer`` answers are not needed."""
    from ivcprune.eval.datasets.base import cell
    from ivcprune.eval.datasets.mcq import options_of

    df, path = ds.rows, getattr(ds, "path", ds.name)
    kind = getattr(ds, "type", "?")
    if kind == "MCQ":
        if not any(len(options_of(r)) for _, r in df.head(50).iterrows()):
            raise PreflightError(f"{path}: an MCQ dataset needs option columns A, B, ... with text; none found")
    if mode == "infer" or kind == "VG":  # VG answers are validated when the TSV is read
        return
    if "answer" not in df.columns:
        raise PreflightError(f"{path}: no 'answer' column to score against; run with --mode infer to only "
                             f"generate predictions")
    answers = [cell(r, "answer") for _, r in df.iterrows()] if kind == "MCQ" else df["answer"].astype(str).tolist()
    if kind == "MCQ":
        options = [sorted(options_of(r)) for _, r in df.iterrows()]
        bad = [a not in opts for a, opts in zip(answers, options)]
        if any(bad):
            raise PreflightError(
                f"{path}: {sum(bad)} answer(s) are not one of the row's option letters, so those rows could never "
                f"be scored right: " + _rows(df, bad, lambda i: f"answer {answers[i]!r}, options "
                                                              f"{''.join(options[i]) or 'none'}")
                + ". Answers must be the uppercase letter of a non-empty option column.")
    elif kind == "YN":
        bad = [a not in ("Yes", "No") for a in answers]
        if any(bad):
            raise PreflightError(f"{path}: {sum(bad)} answer(s) are not 'Yes' or 'No' (scoring compares exactly): "
                                 + _rows(df, bad, lambda i: f"answer {answers[i]!r}"))
        need = {"MME": ("category", "image_path"), "POPE": ("category",)}.get(ds.name, ())
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise PreflightError(f"{path}: {ds.name} scoring needs the column(s) {missing}")
    elif kind == "VQA":
        bad = [not a.strip() for a in answers]
        if any(bad):
            raise PreflightError(f"{path}: {sum(bad)} empty answer(s): " + _rows(df, bad, lambda i: "empty"))


# --------------------------------------------------------------------------------------------- checkpoint
def _looks_like_path(text: str) -> bool:
    """A local path rather than a hub id (``namespace/name``): absolute, relative with ./ or ~, or deeper."""
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or os.path.exists(text)


def check_checkpoint(entry) -> None:
    """Before loading: a checkpoint given as a path (``--model-path`` or ``$<path_env>``) must be a folder."""
    ckpt = str(entry.checkpoint or "")
    if entry.checkpoint_source == "registry" or not _looks_like_path(ckpt):
        return
    where = entry.checkpoint_source
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise PreflightError(f"{where} {ckpt}: no such folder (a checkpoint is a folder holding config.json and "
                             f"the weights, or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct)")
    if not path.is_dir():
        raise PreflightError(f"{where} {ckpt}: not a folder (pass the checkpoint folder, not a file in it)")
    if not (path / "config.json").is_file():
        raise PreflightError(f"{where} {ckpt}: no config.json in this folder; is it the checkpoint folder?")


def _checkpoint_model_type(hf_model) -> str | None:
    """``model_type`` of the config.json the weights came from (the loaded config may have been coerced)."""
    source = getattr(getattr(hf_model, "config", None), "_name_or_path", None)
    if not source:
        return None
    path = Path(source) / "config.json"
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            path = Path(cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False) or "")
        except Exception:  # noqa: BLE001 - offline, gated, ...: the check is skipped, loading already worked
            return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def max_positions(hf_model) -> int | None:
    config = getattr(hf_model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if _is_int(value) and value > 0 else None


def check_model(model, entry) -> None:
    """Right after loading, before any row: the checkpoint matches the family, the pruning settings fit the
    model (K within the depth, backend, cache), and the generation budget fits its positions."""
    hf = getattr(model, "model", None)
    if hf is None or not hasattr(hf, "config"):
        return  # a custom loader's model: nothing to inspect
    expected = getattr(getattr(type(hf), "config_class", None), "model_type", None)
    actual = _checkpoint_model_type(hf)
    if expected and actual and actual != expected:
        raise PreflightError(f"{entry.name}: the checkpoint {entry.checkpoint} is a {actual!r} model, but the entry's "
                             f"family {entry.family} loads {type(hf).__name__} ({expected!r}); its weights would be "
                             f"randomly initialised. Use the registry entry of the checkpoint's family.")
    method = getattr(model, "method", None)
    if method is not None:
        from ivcprune import prune

        try:
            with prune(hf, method):
                pass
        except (ValueError, NotImplementedError, TypeError) as err:
            raise PreflightError(f"{entry.name}: the pruning settings do not fit {entry.checkpoint}: {err}") from None
    budget, limit = getattr(model, "max_new_tokens", None), max_positions(hf)
    if _is_int(budget) and limit is not None and budget >= limit:
        raise PreflightError(f"{entry.name}: generation.max_new_tokens={budget} does not fit the model's "
                             f"{limit} positions together with any prompt")


def check_prompt_length(hf_model, prompt_len: int, max_new_tokens: int) -> None:
    """Raise PromptTooLong when the prompt alone exceeds the positions; warn when the answer budget could."""
    limit = max_positions(hf_model)
    if limit is None:
        return
    if prompt_len > limit:
        raise PromptTooLong(f"prompt too long: {prompt_len} tokens, the model has {limit} positions "
                            f"(max_position_embeddings); not run, counted as a miss")
    if prompt_len + max_new_tokens > limit:
        warnings.warn(f"a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                      f"{limit} positions; long answers run past what the model was trained on", stacklevel=2)
