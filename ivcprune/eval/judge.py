"""Optional LLM judge for MCQ and Y/N outputs the rules cannot resolve (docs/HARNESS.md §7).

The judge talks to an OpenAI-compatible chat-completions endpoint through the
official ``openai`` client, imported lazily so the package works without it.
Without a key it degrades to exact matching and never opens a connection.

Usage::

    judge = make_judge("gpt-4o", '{"timeout": 30}', cache_path, nproc=8, dataset="MMStar")
    letters = judge.mcq_many([(question, {"A": "cat", "B": "dog"}, prediction)])
    answers = judge.yorn_many([(question, prediction)])
    judge.report()
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

__all__ = ["Judge", "make_judge", "parse_judge_args", "DEFAULT_MODEL", "EXACT_MATCHING", "normalize_api_base"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o"
EXACT_MATCHING = "exact_matching"

# Backoff between HTTP retries: BACKOFF_BASE seconds, doubling, capped, with jitter.
# Module-level so tests can shrink it (judge_args must reject unknown keys).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
# Upper bound on a server-requested Retry-After, so a bogus header cannot hang a run.
RETRY_AFTER_MAX = 120.0

MCQ_ATTEMPTS = 3
YORN_ATTEMPTS = 5

_DEFAULT_ARGS: dict[str, Any] = {
    "temperature": 0.0,
    "max_tokens": 16,
    "timeout": 60.0,
    "retry": 5,
    "api_base": None,
}

_RETRYABLE = {408, 409, 429}
_STOPPING = {400, 401, 403, 404}
_CJK = re.compile(r"[\u4e00-\u9fff]")


# ----------------------------------------------------------------------------- prompts

_MCQ_EN_HEAD = (
    "You are helping to grade the answer to a single-choice question. You are given "
    "the question, its options and an answer. Find the option whose meaning is most "
    "similar to the answer and output that option's uppercase letter. If no option "
    "fits the answer, output Z. Output exactly one uppercase letter: one of the valid "
    "option letters, or Z.\n"
)
_MCQ_ZH_HEAD = (
    "你正在帮助批改一道单选题的回答。下面给出问题、选项和一个回答。请找出与回答含义最接近的选项，"
    "并输出该选项的大写字母。如果没有任何选项与回答相符，请输出 Z。只输出一个大写字母："
    "某个有效的选项字母，或者 Z。\n"
)
_MCQ_LABELS = {
    "en": ("Example", "Question:", "Options:", "There are several options:", "Answer:", "Your output:"),
    "zh": ("示例", "问题：", "选项：", "有以下几个选项：", "回答：", "你的输出："),
}
_MCQ_EXAMPLES = {
    "en": (
        "What is the main object in the image?",
        {"A": "teddy bear", "B": "rabbit", "C": "cat", "D": "dog"},
        [("a cute teddy bear", "A"), ("Spider", "Z")],
    ),
    "zh": (
        "图中的主要物体是什么？",
        {"A": "泰迪熊", "B": "兔子", "C": "猫", "D": "狗"},
        [("一只可爱的泰迪熊", "A"), ("蜘蛛", "Z")],
    ),
}

_YORN_HEAD = (
    "You are helping to grade the answer to a yes/no question. You are given the "
    "question and an answer. Decide whether the answer means Yes or No. Output exactly "
    "one word: Yes, No, or Unknown if the answer means neither.\n"
)
_YORN_EXAMPLES = [
    ("Is the word in this image 'Hello'?", "The word in this image is 'Hello'.", "Yes"),
    ("Is the word in this image 'Hello'?", "The word in this image is not 'Hello'.", "No"),
]


def _mcq_block(labels: tuple[str, ...], question: str, options: dict[str, str], answer: str) -> str:
    _, q_lab, o_lab, several, a_lab, out_lab = labels
    lines = [f"{q_lab} {question}", f"{o_lab} {several}"]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines += [f"{a_lab} {answer}", f"{out_lab}"]
    return "\n".join(lines)


def build_mcq_prompt(question: str, options: dict[str, str], prediction: str) -> str:
    """Judge prompt for one MCQ item; Chinese when the item contains CJK ideographs."""
    cjk = bool(_CJK.search(question) or any(_CJK.search(str(t)) for t in options.values()))
    lang = "zh" if cjk else "en"
    labels = _MCQ_LABELS[lang]
    ex_q, ex_opts, ex_pairs = _MCQ_EXAMPLES[lang]
    parts = [_MCQ_ZH_HEAD if cjk else _MCQ_EN_HEAD]
    for i, (ans, out) in enumerate(ex_pairs, 1):
        parts.append(f"{labels[0]} {i}:\n{_mcq_block(labels, ex_q, ex_opts, ans)} {out}\n")
    parts.append(f"{labels[0]} {len(ex_pairs) + 1}:\n{_mcq_block(labels, question, options, prediction)}")
    return "\n".join(parts)


def build_yorn_prompt(question: str, prediction: str) -> str:
    """Judge prompt for one Y/N item."""
    parts = [_YORN_HEAD]
    for i, (q, a, out) in enumerate(_YORN_EXAMPLES, 1):
        parts.append(f"Example {i}:\nQuestion: {q}\nAnswer: {a}\nYour output: {out}\n")
    n = len(_YORN_EXAMPLES) + 1
    parts.append(f"Example {n}:\nQuestion: {question}\nAnswer: {prediction}\nYour output:")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- helpers

def normalize_api_base(url: str | None) -> str | None:
    """Accept a base URL or a full ``.../chat/completions`` URL; return the base."""
    if url is None:
        return None
    url = url.strip().rstrip("/")
    suffix = "/chat/completions"
    if url.endswith(suffix):
        url = url[: -len(suffix)].rstrip("/")
    return url or None


def parse_judge_args(judge_args: dict | str | None) -> dict[str, Any]:
    """Validate ``--judge-args`` (JSON object; known keys, types and ranges); raises ValueError naming the key.

    The runner calls this before any inference, so a typo costs seconds, not a whole run (exit 2)."""
    if judge_args is None or (isinstance(judge_args, str) and not judge_args.strip()):
        given: dict = {}
    elif isinstance(judge_args, str):
        try:
            given = json.loads(judge_args)
        except json.JSONDecodeError as e:
            raise ValueError(f"--judge-args is not valid JSON: {e}") from None
    else:
        given = dict(judge_args)
    if not isinstance(given, dict):
        raise ValueError("--judge-args must be a JSON object")
    unknown = sorted(set(given) - set(_DEFAULT_ARGS))
    if unknown:
        raise ValueError(
            f"unknown --judge-args key(s) {unknown}; allowed: {sorted(_DEFAULT_ARGS)}"
        )
    args = {**_DEFAULT_ARGS, **given}

    def number(key: str, lo: float, hi: float, strict: bool) -> float:
        v = args[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"--judge-args {key} must be a number, got {v!r}")
        if v < lo or (strict and v == lo) or v > hi:
            raise ValueError(f"--judge-args {key} must be in {'(' if strict else '['}{lo:g}, {hi:g}], got {v!r}")
        return float(v)

    def integer(key: str, lo: int, hi: int) -> int:
        v = args[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"--judge-args {key} must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    args["temperature"] = number("temperature", 0.0, 2.0, strict=False)  # the chat-completions range
    args["timeout"] = number("timeout", 0.0, 3600.0, strict=True)
    args["max_tokens"] = integer("max_tokens", 1, 1 << 20)
    args["retry"] = integer("retry", 0, 20)  # 20 retries already back off for ~10 minutes per request
    base = args["api_base"]
    if base is not None and (not isinstance(base, str) or not re.match(r"https?://[^/\s]+", base.strip())):
        raise ValueError(f"--judge-args api_base must be an http(s) URL string, got {base!r}")
    return args


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        val = headers.get("retry-after")
    except Exception:
        return None
    if val is None:
        return None
    try:
        return max(0.0, float(val))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(val)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _text(value: Any) -> str:
    """Prompt-safe text for a cell that may be None."""
    return "" if value is None else str(value)


class _Failed(Exception):
    """A request that exhausted its HTTP retries (or hit a non-retryable, non-stopping status)."""


class _Stopped(Exception):
    """The judge was stopped for this dataset; remaining items use exact matching."""


class _Malformed(Exception):
    """A 200 reply without usable text; counts as one failed attempt."""


# ----------------------------------------------------------------------------- judge

class Judge:
    """Resolves unresolved MCQ/Y-N items with an LLM; one instance per dataset."""

    def __init__(
        self,
        name: str | None,
        judge_args: dict | str | None = None,
        cache_path: Path | str | None = None,
        nproc: int = 8,
        dataset: str = "",
        *,
        backoff_base: float | None = None,
    ) -> None:
        self.args = parse_judge_args(judge_args)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"judge name must be a non-empty string, got {name!r}")
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise ValueError(f"api nproc must be a positive integer, got {nproc!r}")
        self.dataset = dataset
        self.nproc = nproc
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._backoff_base = BACKOFF_BASE if backoff_base is None else float(backoff_base)

        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._slots = threading.BoundedSemaphore(nproc)
        self._client: Any = None
        self._cache: dict[str, dict] | None = None
        self._cache_needs_newline = False
        self._response_models: set[str] = set()
        self.n_judge = 0
        self.n_judge_errors = 0
        self.n_items = 0  # items handed to the judge while it was active
        self.failures: dict[str, list] = {}  # failure class -> [count, first example], every failed attempt
        self._warned_giveup = False
        self.n_requests = 0  # HTTP requests actually sent; handy for diagnostics and tests

        self.requested_model = DEFAULT_MODEL if name is None else name
        self._key = os.environ.get("OPENAI_API_KEY") or None
        self.api_base = normalize_api_base(self.args["api_base"] or os.environ.get("OPENAI_API_BASE"))
        self.reason: str | None = None
        self._active = True
        if self.requested_model == EXACT_MATCHING:
            self.requested_model = None
            self._active = False
            self.reason = "judge disabled (--judge exact_matching)"
        elif self._key is None:
            self._deactivate("OPENAI_API_KEY is not set")

    # -- public API ---------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    @property
    def model(self) -> str | None:
        return self.requested_model

    def mcq_many(self, items: list[tuple[str, dict[str, str], str]]) -> list[str | None]:
        """Letter (or 'Z') per item; None when the judge could not give one."""
        if not items or not self._active:
            return [None] * len(items)
        from ivcprune.eval.datasets.mcq import extract_choice

        def one(item: tuple[str, dict[str, str], str]) -> str | None:
            question, options, prediction = item
            prompt = build_mcq_prompt(_text(question), options, _text(prediction))
            return self._attempts(
                [(prompt, self.args["temperature"])] * MCQ_ATTEMPTS,
                lambda reply: extract_choice(reply, options),
                accept=lambda parsed: True,
            )

        return self._map(one, items)

    def yorn_many(self, items: list[tuple[str, str]]) -> list[str | None]:
        """'Yes'/'No'/'Unknown' per item; None when no attempt produced a reply."""
        if not items or not self._active:
            return [None] * len(items)
        from ivcprune.eval.datasets.yorn import extract_yorn

        def one(item: tuple[str, str]) -> str | None:
            question, prediction = item
            prompt = build_yorn_prompt(_text(question), _text(prediction))
            return self._attempts(
                [(prompt, 0.5 * i) for i in range(YORN_ATTEMPTS)],
                extract_yorn,
                accept=lambda parsed: parsed in ("Yes", "No"),
            )

        return self._map(one, items)

    def report(self) -> dict:
        with self._lock:
            return {
                "mode": "judge" if self._active else EXACT_MATCHING,
                "requested_model": self.requested_model,
                "response_models": sorted(self._response_models),
                "reason": self.reason,
                "n_judge": self.n_judge,
                "n_judge_errors": self.n_judge_errors,
                "n_items": self.n_items,
                "failures": {k: {"count": n, "first": first} for k, (n, first) in self.failures.items()},
            }

    def failed_every_item(self) -> bool:
        """Judging was asked for some items and not one of them got an answer from the judge."""
        with self._lock:
            return self.n_items > 0 and self.n_judge == 0

    def summary_line(self) -> str | None:
        """One line per dataset: items sent, judged, failed, and every failure class with its first example."""
        with self._lock:
            if not self.n_items and not self.failures:
                return None
            failed = self.n_items - self.n_judge
            text = (f"judge {self.requested_model} on {self.dataset or '?'}: {self.n_items} item(s) sent, "
                    f"{self.n_judge} judged, {failed} not judged")
            if self.failures:
                text += "; failures: " + ", ".join(f"{k} x{n} (first: {first!r})"
                                                   for k, (n, first) in self.failures.items())
            if not self._active and self.reason:
                text += f"; {self.reason}"
            return text

    def _fail(self, kind: str, example: Any) -> None:
        """Count one failed attempt of class ``kind``; the first example is kept (redacted, 120 chars)."""
        with self._lock:
            slot = self.failures.setdefault(kind, [0, self._redact(example)[:120]])
            slot[0] += 1

    # -- item flow ----------------------------------------------------------

    def _map(self, fn: Callable[[Any], str | None], items: list) -> list[str | None]:
        """Run ``fn`` over items with at most ``nproc`` in flight; count outcomes."""

        def counted(item: Any) -> str | None:
            if self._active:
                with self._lock:
                    self.n_items += 1
            try:
                out = fn(item)
            except _Stopped:
                return None  # never judged: exact matching, not a judge error
            except _Failed:
                out = None
            with self._lock:
                if out is None:
                    self.n_judge_errors += 1
                else:
                    self.n_judge += 1
            return out

        pool = ThreadPoolExecutor(max_workers=min(self.nproc, len(items)), thread_name_prefix="judge")
        try:
            results = list(pool.map(counted, items))
        except BaseException:
            # Ctrl-C or a bug: let queued items bail out instead of waiting on retries.
            self._halt.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results

    def _attempts(
        self,
        plan: list[tuple[str, float]],
        parse: Callable[[str], str | None],
        accept: Callable[[str], bool],
    ) -> str | None:
        """Ask per ``plan`` until a reply parses and is accepted.

        Returns the last parsed answer (e.g. 'Unknown'), or None if no reply parsed.
        A reply that does not parse is malformed: one failed attempt, never cached.
        """
        last: str | None = None
        for prompt, temperature in plan:
            cached = self._cache_get(prompt, temperature)
            if cached is not None:
                parsed = parse(cached["reply"])
                if parsed is not None:
                    self._note_model(cached.get("response_model"))
                    last = parsed
                    if accept(parsed):
                        return parsed
                    continue
            try:
                reply, resp_model = self._request(prompt, temperature)
            except _Malformed:
                continue
            except (_Failed, _Stopped):
                if last is None:
                    raise
                return last  # keep what an earlier attempt established
            parsed = parse(reply)
            if parsed is None:
                word = reply.strip().strip(".").strip()
                self._fail("not an option" if re.fullmatch(r"[A-Za-z]", word) else "unparseable reply", reply)
                continue
            self._note_model(resp_model)
            self._cache_put(prompt, temperature, reply, resp_model)
            last = parsed
            if accept(parsed):
                return parsed
        return last

    def _note_model(self, model: str | None) -> None:
        if model:
            with self._lock:
                self._response_models.add(model)

    # -- HTTP ---------------------------------------------------------------

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            if not self._active:
                raise _Stopped()
            try:
                import openai
            except ImportError:
                reason = "the 'openai' package is not installed (pip install 'ivcprune[eval]')"
                self._deactivate(reason, locked=True)
                raise _Stopped() from None
            kwargs: dict[str, Any] = {
                "api_key": self._key,
                "max_retries": 0,
                "timeout": self.args["timeout"],
            }
            if self.api_base:
                kwargs["base_url"] = self.api_base
            self._client = openai.OpenAI(**kwargs)
            return self._client

    def _request(self, prompt: str, temperature: float) -> tuple[str, str | None]:
        """One chat completion with our own retry loop; returns (reply, response model)."""
        retries = self.args["retry"]
        for n in range(retries + 1):
            if not self._active or self._halt.is_set():
                raise _Stopped()
            client = self._get_client()
            import openai  # present: _get_client imported it

            wait: float | None = None
            try:
                with self._slots:
                    with self._lock:
                        self.n_requests += 1
                    resp = client.chat.completions.create(
                        model=self.requested_model,
                        messages=[{"role": "user", "content": prompt}],
                        temperature=temperature,
                        max_tokens=self.args["max_tokens"],
                    )
            except openai.APIStatusError as e:
                code = e.status_code
                if code in _STOPPING:
                    self._fail(f"HTTP {code}", e.message)
                    self._deactivate(f"judge stopped after HTTP {code}: {self._redact(e.message)}")
                    raise _Failed() from None
                if code not in _RETRYABLE and code < 500:
                    self._fail(f"HTTP {code}", e.message)
                    log.warning("judge request failed with HTTP %d: %s", code, self._redact(e.message))
                    raise _Failed() from None
                wait = _retry_after(getattr(e.response, "headers", None))
                err = f"HTTP {code}"
            except openai.APITimeoutError:
                err = "timeout"
            except openai.APIConnectionError as e:
                err = f"connection error ({type(e.__cause__).__name__ if e.__cause__ else 'unknown'})"
            except (openai.APIError, ValueError, TypeError, KeyError, AttributeError) as e:
                # e.g. a 200 whose body is not JSON or does not fit the schema
                body = getattr(e, "doc", None)  # json.JSONDecodeError keeps the document
                if isinstance(body, str):
                    self._fail("HTML body" if body.lstrip().startswith("<") else "reply not JSON", body)
                else:
                    self._fail("malformed response", f"{type(e).__name__}: {e}")
                log.debug("judge reply malformed: %s", self._redact(f"{type(e).__name__}: {e}"))
                raise _Malformed() from None
            else:
                return self._unpack(resp)
            if n == retries:
                self._fail(f"{err} after {retries} retries", err)
                with self._lock:
                    first, self._warned_giveup = not self._warned_giveup, True
                (log.warning if first else log.debug)(
                    "judge request gave up after %d retries (%s); the item stays unresolved "
                    "and is retried on the next run", retries, err)
                raise _Failed()
            delay = self._backoff(n) if wait is None else min(wait, RETRY_AFTER_MAX)
            log.debug("judge %s; retry %d/%d in %.2fs", err, n + 1, retries, delay)
            if self._halt.wait(delay):
                raise _Stopped()
        raise _Failed()  # unreachable; keeps type checkers quiet

    def _unpack(self, resp: Any) -> tuple[str, str | None]:
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            self._fail("malformed response", repr(resp))
            raise _Malformed()
        if not choices:
            self._fail("empty choices", repr(resp))
            raise _Malformed()
        try:
            content = choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            self._fail("malformed response", repr(resp))
            raise _Malformed() from None
        if not isinstance(content, str) or not content.strip():
            self._fail("empty reply", repr(content))
            raise _Malformed()
        model = getattr(resp, "model", None)
        return content, model if isinstance(model, str) else None

    def _backoff(self, n: int) -> float:
        """Exponential backoff for retry ``n`` (0-based) with 'equal' jitter."""
        delay = min(BACKOFF_CAP, self._backoff_base * (2 ** n))
        return delay / 2 + random.uniform(0, delay / 2)

    def _deactivate(self, reason: str, locked: bool = False) -> None:
        """Switch to exact matching for the rest of the dataset, warning once."""
        if locked:
            first = self._deactivate_locked(reason)
        else:
            with self._lock:
                first = self._deactivate_locked(reason)
        if first:
            where = f" for {self.dataset}" if self.dataset else ""
            log.warning("judge %s: %s; using exact matching%s", self.requested_model, reason, where)

    def _deactivate_locked(self, reason: str) -> bool:
        if not self._active:
            return False
        self._active = False
        self.reason = reason
        return True

    def _redact(self, text: Any) -> str:
        """Keep keys out of logs and score files, even if a server echoes them."""
        s = str(text)[:300]
        if self._key:
            s = s.replace(self._key, "***")
        s = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", s)
        return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", s)

    # -- cache --------------------------------------------------------------

    def _cache_key(self, prompt: str, temperature: float) -> str:
        blob = json.dumps([self.requested_model, prompt, float(temperature)], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _load_cache(self) -> dict[str, dict]:
        if self._cache is not None:
            return self._cache
        cache: dict[str, dict] = {}
        if self.cache_path is not None and self.cache_path.exists():
            data = self.cache_path.read_bytes()
            self._cache_needs_newline = bool(data) and not data.endswith(b"\n")
            for line in data.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("reply"), str):
                    cache[entry["key"]] = entry
        self._cache = cache
        return cache

    def _cache_get(self, prompt: str, temperature: float) -> dict | None:
        if self.cache_path is None:
            return None
        key = self._cache_key(prompt, temperature)
        with self._lock:
            return self._load_cache().get(key)

    def _cache_put(self, prompt: str, temperature: float, reply: str, resp_model: str | None) -> None:
        if self.cache_path is None:
            return
        entry = {
            "key": self._cache_key(prompt, temperature),
            "judge_model": self.requested_model,
            "temperature": float(temperature),
            "reply": reply,
            "response_model": resp_model,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self._load_cache()[entry["key"]] = entry
            if self._cache_needs_newline:
                line = "\n" + line
            # One write() on an O_APPEND descriptor: a whole line lands or nothing does.
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
            self._cache_needs_newline = False


def make_judge(
    name: str | None,
    judge_args: dict | str | None,
    cache_path: Path | None,
    nproc: int = 8,
    dataset: str = "",
) -> Judge:
    """Build the judge for one dataset (validates ``judge_args``; never connects)."""
    return Judge(name, judge_args, cache_path, nproc=nproc, dataset=dataset)
