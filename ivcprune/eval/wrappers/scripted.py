"""A scripted stand-in Model: deterministic answers, no weights, for harness tests and dry runs.

Select it from registry YAML with ``loader: ivcprune.eval.wrappers.scripted:load``. Runtime knobs are
environment variables, so they never change the fingerprint:
``IVCP_SCRIPTED_LOG`` (append one line per ``generate`` call), ``IVCP_SCRIPTED_SLEEP`` (seconds per call),
``IVCP_SCRIPTED_FAIL`` (raise when the prompt text contains this string; in a batch the whole call raises, as
an out-of-memory error would), ``IVCP_SCRIPTED_LOAD_FAIL`` (fail to load), ``IVCP_SCRIPTED_REPLY`` (answer every
row with this text, e.g. empty or unresolvable), ``IVCP_SCRIPTED_BATCH_LOG`` (append the number of rows of every
``generate_batch`` call).
"""

from __future__ import annotations

import hashlib
import os
import re
import time


class ScriptedModel:
    def __init__(self, entry, device: str = "cpu"):
        self.entry = entry
        self.pruned = bool(entry.pruning)
        self.retention = float((entry.pruning or {}).get("retention") or 0.5) if self.pruned else 1.0
        self.last_stats: dict = {}
        self.meta = {"device": "cpu", "dtype": "float32", "attn": "none", "image_processor": "none"}

    def input_size(self, w: int, h: int) -> tuple[int, int]:
        return max(28, round(w / 28) * 28), max(28, round(h / 28) * 28)

    def generate(self, parts, dataset) -> str:
        out = self.generate_batch([parts], dataset)[0]
        self.last_stats = out.stats
        return out.text

    def generate_batch(self, batch: list, dataset) -> list:
        """One call for several rows: one log line per row, one sleep per call."""
        from ivcprune.eval.batching import RowOutput

        texts = ["".join(p for kind, p in parts if kind == "text") for parts in batch]
        for name, lines in (("IVCP_SCRIPTED_LOG", [t.replace("\n", " ").strip() for t in texts]),
                            ("IVCP_SCRIPTED_BATCH_LOG", [str(len(batch))])):
            log = os.environ.get(name)
            if log:
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write("".join(line + "\n" for line in lines))
        fail = os.environ.get("IVCP_SCRIPTED_FAIL")
        if fail and any(fail in text for text in texts):
            raise RuntimeError(f"scripted failure on {fail!r}")
        time.sleep(float(os.environ.get("IVCP_SCRIPTED_SLEEP", "0") or 0))
        outputs = []
        for parts, text in zip(batch, texts):
            images = [p for kind, p in parts if kind == "image"]
            n_img = sum(max(1, (im.size[0] // 28) * (im.size[1] // 28)) for im in images)
            kept = int(round(n_img * self.retention))
            answer = os.environ.get("IVCP_SCRIPTED_REPLY")
            if answer is None:
                answer = self._answer(text, images, getattr(dataset, "type", ""))
            stats = {"image_tokens": n_img, "kept_tokens": kept, "kv_bytes_full": 1024 * (n_img + 20),
                     "kv_bytes_kept": 1024 * (kept + 20), "prefill_ms": 1.0, "decode_ms": 2.0, "new_tokens": 3}
            outputs.append(RowOutput(text=answer, stats=stats))
        return outputs

    @staticmethod
    def _answer(text: str, images, kind: str) -> str:
        digest = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)
        if kind == "VG":
            w, h = images[0].size if images else (100, 100)
            x1, y1 = digest % max(w // 2, 1), (digest >> 8) % max(h // 2, 1)
            return f'```json\n[{{"bbox_2d": [{x1}, {y1}, {x1 + w // 3}, {y1 + h // 3}], "label": "x"}}]\n```'
        if kind == "MCQ":
            letters = re.findall(r"^([A-Z])\. ", text, flags=re.M) or ["A"]
            return letters[digest % len(letters)]
        return "Yes" if digest % 2 else "No"


def load(entry, device: str = "cpu") -> ScriptedModel:
    if os.environ.get("IVCP_SCRIPTED_LOAD_FAIL"):
        raise RuntimeError("scripted load failure (IVCP_SCRIPTED_LOAD_FAIL is set)")
    return ScriptedModel(entry, device)
