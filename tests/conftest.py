"""Session-wide settings: Airflow never touches ~/airflow during the tests."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports Airflow: its home and config are read at import time.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hitl-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("HITL_HOME", tempfile.mkdtemp(prefix="hitl-tests-home-"))


def _stub_module():
    name = "hitl_tests_ls_stub"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "labeling" / "ls_stub.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def stub_ls():
    """A stub Label Studio on 127.0.0.1 (tests/labeling/ls_stub.py), for faults only."""
    with _stub_module().StubLabelStudio() as stub:
        yield stub
