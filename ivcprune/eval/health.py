"""Whether a pair's rows can give a trustworthy score (issue 10).

A row recorded with an error (bad image, prompt too long, an exception in ``generate``) is a counted miss. A few
of them are normal on a long run and a rerun retries them; many of them mean the score measures the failures,
not the model. ``verdict`` returns the reason a pair must fail, or None:

* every row failed, or more than ``max_failed`` (a fraction, default ``DEFAULT_MAX_FAILED`` = 5 %) of them;
* no row failed but every prediction is empty.

The message lists the first distinct error messages with their counts, so the cause is on the console.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

DEFAULT_MAX_FAILED = 0.05
_DISTINCT = 5


def distinct_errors(errors: list[str]) -> list[tuple[str, int]]:
    """(first line of the message, count), in order of first appearance."""
    return list(Counter(e.strip().splitlines()[0][:300] if e.strip() else "?" for e in errors).items())


def verdict(records: list[dict], max_failed: float = DEFAULT_MAX_FAILED) -> str | None:
    """The reason the pair's score cannot be trusted, or None."""
    n = len(records)
    if not n:
        return None
    errors = [str(r.get("error")) for r in records if r.get("error")]
    if errors and (len(errors) == n or len(errors) > max_failed * n):
        head = "every row failed" if len(errors) == n else \
            f"{len(errors)} of {n} rows failed ({len(errors) / n:.0%}, more than the {max_failed:.0%} allowed by " \
            f"--max-failed-rows)"
        kinds = distinct_errors(errors)
        listed = "\n".join(f"    {count:>6} x {message}" for message, count in kinds[:_DISTINCT])
        more = f"\n    ... and {len(kinds) - _DISTINCT} more distinct error(s)" if len(kinds) > _DISTINCT else ""
        return (f"{head}; no score was written. First distinct errors:\n{listed}{more}\n"
                f"Failed rows are retried when the same command runs again.")
    if not errors and all(not str(r.get("prediction") or "").strip() for r in records):
        return (f"all {n} predictions are empty (the model generated no text for any row); no score was written. "
                f"Check the checkpoint, the chat template and generation.max_new_tokens.")
    return None


def remove_stale_scores(paths: list[Path]) -> list[Path]:
    """Delete score files left by an earlier run of the pair (they describe other predictions)."""
    removed = []
    for p in paths:
        if Path(p).is_file():
            Path(p).unlink()
            removed.append(Path(p))
    return removed
