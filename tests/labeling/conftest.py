"""The local Label Studio stub (tests/labeling/ls_stub.py) as the ``stub_ls`` fixture."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _stub_module():
    name = "hitl_tests_ls_stub"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "labeling" / "ls_stub.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def stub_ls():
    """A running stub Label Studio on 127.0.0.1 (for faults only)."""
    with _stub_module().StubLabelStudio() as stub:
        yield stub
