"""The pocket grounding model: a tiny stock Qwen2.5-VL trained here on synthetic referring scenes.

``scenes`` draws the task, ``build`` defines the architecture / processor / chat template, ``train`` trains it
(``ivcp pocket train``); the trained weights ship in ``model/`` (see its MODEL_CARD.md).
"""

from __future__ import annotations

import sys


def cli_main(argv: list[str] | None = None) -> int:
    """``ivcp pocket train [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: ivcp pocket train [options]   (ivcp pocket train --help)", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from .train import cli_main as train

    return train(argv[1:])
