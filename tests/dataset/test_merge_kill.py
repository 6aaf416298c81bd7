"""kill -9 during a merge, at 20 points across its phases (issue 13, suite item 2): every
time LATEST is readable, complete and hash-verified, and a rerun publishes exactly one
version.

The merge runs in a child process that logs the publish phases (streaming the images, then
the annotations, into the new file; fsync; the rename into place; LATEST) at debug level;
the parent
kills it with SIGKILL a random moment after a chosen phase begins, and records the phase
the kill hit (the last one the child logged).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from hitl_dev.bench.merge import NAME, _generate
from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.schemas import Corrections

PHASES = ("images", "annotations", "fsync", "rename", "latest")

CHILD = textwrap.dedent('''
    import logging, sys
    from hitl_plugin.dataset.merge import merge_corrections
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.schemas import Corrections
    root, corrections, log_file = sys.argv[1:4]
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("hitl_plugin.dataset").addHandler(handler)
    logging.getLogger("hitl_plugin.dataset").setLevel(logging.DEBUG)
    merge_corrections(DatasetStore(root, "coco"), base_version="v0001",
                      corrections=Corrections.model_validate_json(open(corrections).read()),
                      round_key="kill|r1", human_weight=3.0, decay=0.5,
                      report_path=root + "/report.json")
''')


def _phases(log_file: Path) -> list[str]:
    try:
        lines = log_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [ln.split(": ", 1)[1] for ln in lines if ln.startswith("publish phase: ")]


@pytest.mark.slow
def test_kill_9_at_20_points_of_a_merge_never_loses_latest(tmp_path):
    base = tmp_path / "base"
    gen = _generate(str(base), 6000, 30000, 300, 5)
    corrections = gen["corrections_file"]
    rng = random.Random(13)
    hit: Counter = Counter()
    finished = 0
    for k in range(20):
        target = PHASES[k % len(PHASES)]
        # the streaming phases last: kill anywhere in them; the others are short: at once
        delay = rng.uniform(0.0, 0.05) if target in ("images", "annotations") else 0.0
        root = tmp_path / f"run{k}"
        shutil.copytree(base, root, symlinks=True)
        log_file = root / "phases.log"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), corrections,
                                  str(log_file)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while target not in _phases(log_file) and child.poll() is None \
                and time.monotonic() < deadline:
            pass  # poll as fast as possible: some phases last a millisecond
        time.sleep(delay)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        code = child.wait(timeout=60)
        seen = _phases(log_file)
        if code == 0:
            finished += 1
        else:
            assert code == -signal.SIGKILL
            hit[seen[-1] if seen else "start"] += 1

        store = DatasetStore(root, NAME)
        latest = store.latest()
        assert latest in ("v0001", "v0002"), (k, latest)
        store.verify(latest)  # readable and hash-verified
        assert len(store.load(latest)["images"]) == 6000  # complete
        again = merge_corrections(
            store, base_version="v0001",
            corrections=Corrections.model_validate_json(Path(corrections).read_text()),
            round_key="kill|r1", human_weight=3.0, decay=0.5,
            report_path=root / "report.json")
        assert again["version"] == "v0002" and store.versions() == ["v0001", "v0002"]
        assert store.latest() == "v0002" and store.verify("v0002")
        leftovers = list(store.dir.glob(".tmp-*"))
        store.recover()
        assert not list(store.dir.glob(".tmp-*")), leftovers
        shutil.rmtree(root)
    print("kill -9 during a merge: phases hit", dict(hit), "finished before the kill",
          finished)
    (tmp_path / "hits.json").write_text(json.dumps(hit))
    assert sum(hit.values()) >= 15
    assert len(hit) >= 5, hit
