"""The ``hitl bench`` benchmarks, and what they share."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to fd 1 (Ultralytics' and tqdm's prints) goes to stderr, so that a
    benchmark's stdout carries only its JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def own_label_studio(data_dir: Path, document_root: Path) -> Iterator[Any]:
    """A Label Studio of the benchmark's own on a free port, stopped however the process
    ends: SIGTERM/SIGINT run the ``finally``, and a watchdog stops it even after a SIGKILL.
    Yields the :class:`~hitl_dev.labelstudio.LabelStudioServer`."""
    from hitl_dev.labelstudio import LabelStudioServer, exit_on_signals, free_port

    server = LabelStudioServer(data_dir=data_dir, document_root=document_root,
                               port=free_port())
    exit_on_signals()
    watchdog = server.stop_with_process()
    try:
        began = time.perf_counter()
        server.start(timeout=300)
        print(f"started Label Studio at {server.url} in {time.perf_counter() - began:.0f} s",
              file=sys.stderr)
        yield server
    finally:
        server.stop()
        watchdog.kill()


def emit(result: dict, out: Path | None) -> None:
    """Print a benchmark's final JSON (the only thing on stdout); also write it to ``out``."""
    text = json.dumps(result, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    print(text)
