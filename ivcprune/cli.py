"""`ivcp` entry point: a thin dispatcher; each sub-command owns its own argument parser in its module."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": ("ivcprune.eval.commands", "run", "evaluate models on datasets (VLMEvalKit-compatible); --method or a "
            "retention list runs a sweep"),
    "sweep": ("ivcprune.eval.sweep", "cli_main", "accuracy versus retention per method: table and plot"),
    "list": ("ivcprune.eval.registry", "cli_main", "list registered models or datasets"),
    "convert": ("ivcprune.tools.convert", "cli_main", "convert MDETR RefCOCO annotations to TSV"),
    "bench": ("ivcprune.tools.bench", "cli_main", "prefill/decode latency, memory, KV bytes, FLOPs"),
    "visualize": ("ivcprune.tools.visualize", "cli_main", "PNG of the kept tokens over an image"),
    "demo": ("ivcprune.tools.demo", "cli_main", "run the embedded demo offline (pocket Qwen2.5-VL + synthetic RefCOCO)"),
    "pocket": ("ivcprune.pocket", "cli_main", "pocket grounding model: 'ivcp pocket train' (re)trains it on a CPU"),
}


def _usage() -> str:
    lines = ["usage: ivcp <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'ivcp <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ivcp: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
