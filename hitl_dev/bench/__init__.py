"""The ``hitl bench`` benchmarks, and what they share."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def run_in_work(work: Path | None, out: Path | None, *, prefix: str,
                compute: Callable[[Path, Callable[[dict], None]], dict],
                plot: Callable[[dict, Path], None]) -> int:
    """Run a benchmark that keeps caches in a working folder and prints one JSON.

    ``compute(work, on_progress)`` does the work; each partial result it hands
    ``on_progress`` is written to ``out`` (so a long run leaves its numbers so far), and the
    final one too, with ``plot`` drawn beside it (``.png``). Without ``work`` a temporary
    folder is used and removed at the end. Everything but the final JSON goes to stderr.
    """
    keep = work is not None
    work = (work or Path(tempfile.mkdtemp(prefix=prefix))).absolute()

    def progress(partial: dict) -> None:
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(partial, indent=1) + "\n")

    try:
        with stdout_to_stderr():
            result = compute(work, progress)
            result["work"] = str(work) if keep else None
            if out:
                progress(result)
                plot(result, out.with_suffix(".png"))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


def emit(result: dict, out: Path | None) -> None:
    """Print a benchmark's final JSON (the only thing on stdout); also write it to ``out``."""
    text = json.dumps(result, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    print(text)
