"""The ``hitl`` command.

Each subcommand lives in its own module with a ``main(argv) -> int``; the module is only
imported when its command runs, so ``hitl --help`` stays fast and light. ``hitl dataset``
is the runtime package's own (:mod:`hitl_plugin.dataset.cli`); the other commands are the
development tooling of this package.
"""

from __future__ import annotations

import importlib
import logging
import sys

#: command -> (module, one-line help). ``bench`` takes a benchmark name next.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("hitl_dev.synth", "Generate a synthetic COCO dataset whose truth is known."),
    "dataset": ("hitl_plugin.dataset.cli", "Import, export, list and inspect dataset versions."),
    "config": ("hitl_plugin.config", "Check pipeline config files; print their JSON Schema."),
    "base-checkpoint": (
        "hitl_dev.base_checkpoint",
        "Train the small base checkpoint shipped with the package.",
    ),
    "labelstudio": (
        "hitl_dev.labelstudio",
        "Start, stop or check the local Label Studio server.",
    ),
    "annotate-sim": (
        "hitl_dev.simulator",
        "SIMULATED annotators: label open Label Studio tasks from a truth file.",
    ),
    "stack": ("hitl_dev.stack", "Start or stop the embedded Airflow + Label Studio stack."),
}
BENCHMARKS: dict[str, tuple[str, str]] = {
    "selection": ("hitl_dev.bench.selection", "Label-error selection vs random and cleanlab."),
    "fanout": ("hitl_dev.bench.fanout", "Operator submit vs one raw bulk import."),
    "merge": (
        "hitl_dev.bench.merge", "Merge 10,000 corrections into a COCO-train2017-sized set."
    ),
    "dagparse": ("hitl_dev.bench.dagparse", "Parse time of the DAG file, and its imports."),
    "drift": (
        "hitl_dev.bench.drift",
        "Drift: detection power and false alarms, and rounds that recover from it.",
    ),
    "rounds": (
        "hitl_dev.bench.rounds",
        "R rounds of the loop per strategy and seed: active learning, label correction.",
    ),
    "waits": (
        "hitl_dev.bench.waits",
        "N labeling waits at once on the CeleryExecutor: slots, triggerer, requests.",
    ),
    "workforce": (
        "hitl_dev.bench.workforce",
        "SIMULATED people of known accuracy: gold scoring, consensus, the weak one flagged.",
    ),
}


def _usage() -> str:
    lines = ["usage: hitl COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["  bench NAME       Run a benchmark; prints JSON. Benchmarks:"]
    lines += [f"    {name:<14} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    table, prog = COMMANDS, f"hitl {command}"
    if command == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            print(_usage(), file=sys.stderr)
            return 2
        table, command, rest, prog = BENCHMARKS, rest[0], rest[1:], f"hitl bench {rest[0]}"
    if command not in table:
        print(f"hitl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[command][0])
    return int(module.main(rest, prog=prog) or 0)


if __name__ == "__main__":
    sys.exit(main())
