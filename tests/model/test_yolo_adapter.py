"""The Ultralytics adapter is the only module that touches Ultralytics, and every private
name it relies on still exists in the pinned version."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from hitl_plugin.model import yolo

REPO = Path(__file__).resolve().parents[2]


def _resolve(module: str, path: str):
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module", "path"), yolo.PRIVATE_API,
                         ids=[f"{m}:{p}" for m, p in yolo.PRIVATE_API])
def test_pinned_private_name_exists(module, path):
    yolo.import_ultralytics()
    assert _resolve(module, path) is not None


def test_private_call_signatures_we_rely_on():
    yolo.import_ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    assert "return_idxs" in inspect.signature(non_max_suppression).parameters
    from ultralytics.models.yolo.detect import DetectionTrainer

    params = inspect.signature(DetectionTrainer.get_dataloader).parameters
    assert list(params)[:5] == ["self", "dataset_path", "batch_size", "rank", "mode"]


def test_the_pin_is_exact_and_installed():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("ultralytics")]
    assert re.fullmatch(r"ultralytics==[\d.]+", pin), pin
    assert version("ultralytics") == pin.split("==")[1]


def test_no_other_module_imports_ultralytics():
    offenders = []
    for folder in ("hitl_plugin", "operators", "sensors", "dags", "hitl_dev"):
        for path in (REPO / folder).rglob("*.py"):
            if path == REPO / "hitl_plugin" / "model" / "yolo.py":
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                if re.match(r"\s*(from|import)\s+ultralytics\b", line):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []
