"""The runtime never loads the development tooling (``hitl_dev``), nor anything heavy.

(This also stands for the per-operator "imports nothing heavy" checks: each operator module
and the sensor are among the entry points.)

Each runtime entry point is imported in a fresh interpreter, the way Airflow loads it: the
DAG file as the DAG processor parses it, the plugin and the provider info as the API server
reads them, the operators and the sensor as a task process does, the trigger as the
triggerer does, and the hook.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ultralytics", "pycocotools", "cv2", "matplotlib")
#: Loaded by tasks when they talk to Label Studio, never at import (requests comes with
#: Airflow itself, so it is not listed).
LAZY = ("hitl_plugin.labeling.client",)

ENTRY_POINTS = {
    "dag file": "from airflow.dag_processing.dagbag import DagBag; "
                f"bag = DagBag(dag_folder={str(REPO / 'dags' / 'hitl_pipelines.py')!r}); "
                "assert not bag.import_errors and bag.dags, bag.import_errors",
    "plugin": "from importlib.metadata import entry_points; "
              "[ep.load() for ep in entry_points(group='airflow.plugins') if ep.name == 'hitl']",
    "provider info": "from importlib.metadata import entry_points; "
                     "[ep.load()() for ep in entry_points(group='apache_airflow_provider') "
                     "if ep.value.startswith('hitl_plugin')]",
    "operators": "import hitl_plugin.operators as o; [getattr(o, n) for n in o.__all__]",
    "sensors": "from hitl_plugin.sensors import LabelsReadySensor",
    "trigger": "from hitl_plugin.triggers.label_studio import LabelsReadyTrigger",
    "hook": "from hitl_plugin.hooks.label_studio import LabelStudioHook",
}


def _loaded(code: str) -> list[str]:
    probe = (f"{code}\nimport sys, json\n"
             "print('LOADED ' + json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('hitl_dev',) + " + repr(HEAVY) + " or m in "
             + repr(LAZY) + ")))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED ")][-1]
    return json.loads(line[len("LOADED "):])


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_runtime_entry_point_loads_no_dev_tooling_and_nothing_heavy(name):
    assert _loaded(ENTRY_POINTS[name]) == []


def test_the_dev_package_exists_and_imports():
    """So that renaming the dev package cannot make the closure test pass vacuously."""
    loaded = _loaded("import hitl_dev.synth, hitl_dev.simulator, hitl_dev.labelstudio, "
                     "hitl_dev.stack, hitl_dev.base_checkpoint, hitl_dev.bench.selection, "
                     "hitl_dev.bench.fanout, hitl_dev.bench.merge, hitl_dev.bench.dagparse")
    assert {"hitl_dev.synth", "hitl_dev.simulator", "hitl_dev.stack"} <= set(loaded)


def test_no_runtime_module_names_the_dev_package():
    """A static check as well: not even a lazy import inside a function, nor a module name
    in a string (the ``hitl`` command lives in the dev package and dispatches both ways)."""
    offenders = [str(p.relative_to(REPO)) for folder in ("hitl_plugin", "operators", "sensors",
                                                       "dags")
                 for p in (REPO / folder).rglob("*.py")
                 if "hitl_dev" in p.read_text(encoding="utf-8")]
    assert offenders == []
