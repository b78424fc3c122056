"""``ivcp run``: one runner call, or a sweep when the command line asks for several settings.

The dispatch lives here so that the runner and the sweep do not import each other: the sweep calls the runner,
the runner knows nothing of sweeps.
"""

from __future__ import annotations

import sys


def run(argv: list[str] | None = None) -> int:
    """``--method`` or a comma list of ``--retention`` values: the sweep; otherwise one runner call."""
    from ivcprune.eval import runner, sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    if sweep.wants_sweep(argv):
        return sweep.cli_main(argv)
    return runner.cli_main(argv)
