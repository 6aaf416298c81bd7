"""A benchmark killed with SIGTERM stops the Label Studio it started (issue 13, defect 13:
seen when ``hitl bench fanout`` got SIGTERM, its server kept running)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_the_benchmarks_label_studio(tmp_path):
    hitl = str(Path(sys.executable).with_name("hitl"))
    proc = subprocess.Popen([hitl, "bench", "fanout", "--n", "20", "--batch-size", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HITL_HOME": str(tmp_path)})
    port, seen = None, []
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 240
    try:
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=1):
                line = proc.stderr.readline()
                seen.append(line)
                found = re.search(r"starting Label Studio on http://127\.0\.0\.1:(\d+)", line)
                if found:
                    port = int(found.group(1))
        assert port is not None, "".join(seen[-20:])
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _listening(port), "".join(seen[-20:])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone = time.monotonic() + 40
    while _listening(port) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not _listening(port), "the benchmark's Label Studio outlived it"
