#!/usr/bin/env python
"""Drop-in for the official `convert_to_tsv.py`: same flags, rows byte-identical (docs/HARNESS.md §3).

Thin wrapper around `ivcprune.tools.convert` (also available as `ivcp convert`).
"""

import sys
from pathlib import Path

try:
    from ivcprune.tools.convert import cli_main
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ivcprune.tools.convert import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(prog="convert_to_tsv.py"))
