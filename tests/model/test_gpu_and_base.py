"""A GPU run (faked on the CPU) and a user's own COCO-pretrained base checkpoint."""

from __future__ import annotations

import logging

import pytest
import yaml

from hitl_dev.base_checkpoint import tiny_export
from hitl_plugin.config import parse_config
from hitl_plugin.exceptions import ConfigError


class _Planned(Exception):
    """Raised by the stand-in for ``YOLO.train``: the arguments are what the test wants."""


def _planned_args(monkeypatch, tmp_path, data, **kwargs) -> dict:
    from hitl_plugin.model import yolo
    from hitl_plugin.model.train import train

    ultralytics = yolo.import_ultralytics()
    seen: dict = {}

    def plan(self, **args):
        seen.update(args)
        raise _Planned

    monkeypatch.setattr(ultralytics.YOLO, "train", plan)
    with pytest.raises(_Planned):
        train(data, tmp_path / f"out{len(list(tmp_path.iterdir()))}", epochs=1, imgsz=64,
              batch=4, **kwargs)
    return seen


def test_fake_cuda_turns_on_mixed_precision_and_workers_from_the_machine(tmp_path, monkeypatch):
    import torch

    from hitl_plugin.model import yolo

    data, _, _ = tiny_export(tmp_path / "d", train=4, val=2)
    monkeypatch.setattr(yolo, "machine_cpus", lambda: 6)
    cpu = _planned_args(monkeypatch, tmp_path, data)
    assert (cpu["device"], cpu["amp"], cpu["workers"]) == ("cpu", False, 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = _planned_args(monkeypatch, tmp_path, data)
    assert (gpu["device"], gpu["amp"], gpu["workers"]) == ("0", True, 5)
    monkeypatch.setattr(yolo, "machine_cpus", lambda: 64)
    assert _planned_args(monkeypatch, tmp_path, data)["workers"] == 8  # Ultralytics' cap
    chosen = _planned_args(monkeypatch, tmp_path, data, amp=False, workers=3)
    assert (chosen["amp"], chosen["workers"]) == (False, 3)


def test_the_offline_amp_check_on_a_fake_gpu(monkeypatch):
    import torch

    from hitl_plugin.model import yolo

    ultralytics = yolo.import_ultralytics()
    from hitl_plugin.model.train import _architecture_path

    model = ultralytics.YOLO(_architecture_path("yolov8n.yaml")).model
    assert yolo.offline_amp_check(model) is False  # the CPU: no mixed precision
    monkeypatch.setattr(yolo, "device_type", lambda device: "cuda")
    assert yolo.offline_amp_check(model) is True
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # a device whose half precision breaks
    assert yolo.offline_amp_check(model) is False


def test_ultralytics_amp_check_never_runs_so_nothing_downloads(tmp_path, monkeypatch):
    """A real training asked for mixed precision: the trainer's AMP check (on a GPU it fetches
    yolo26n.pt) is ours while the trainer sets up, and Ultralytics' is back afterwards."""
    from ultralytics.engine import trainer as engine

    from hitl_plugin.model import yolo
    from hitl_plugin.model.train import train

    yolo.import_ultralytics()
    calls = []

    def downloads(model):
        raise AssertionError("Ultralytics' check_amp ran: it downloads weights on a GPU")

    real = yolo.offline_amp_check
    monkeypatch.setattr(engine, "check_amp", downloads)
    monkeypatch.setattr(yolo, "offline_amp_check", lambda model: calls.append(1) or real(model))
    data, _, _ = tiny_export(tmp_path / "d", train=8, val=2)
    result = train(data, tmp_path / "out", epochs=1, imgsz=64, batch=4, amp=True)
    assert result["epochs"] == 1 and calls == [1]
    assert engine.check_amp is downloads


def _coco80_checkpoint(path):
    from hitl_plugin.model import yolo
    from hitl_plugin.model.train import _architecture_path

    ultralytics = yolo.import_ultralytics()
    from ultralytics.utils import ROOT

    names = yaml.safe_load((ROOT / "cfg" / "datasets" / "coco.yaml").read_text())["names"]
    model = ultralytics.YOLO(_architecture_path("yolov8n.yaml"))
    model.model.names = names
    model.save(str(path))
    return path


def test_a_coco_pretrained_base_gets_a_new_head_with_a_warning(tmp_path, caplog):
    from hitl_plugin import steps
    from hitl_plugin.model import yolo
    from hitl_plugin.model.gate import promote
    from hitl_plugin.model.train import train

    base = _coco80_checkpoint(tmp_path / "coco80.pt")
    assert len(yolo.checkpoint_names(base)) == 80
    data, _, root = tiny_export(tmp_path / "d", train=8, val=2, classes=2)
    names = list(yaml.safe_load(data.read_text())["names"].values())
    rnd = steps.Round(parse_config({"dag_id": "p", "dataset": {"name": "tiny"}}), root, "p", "r")

    with caplog.at_level(logging.WARNING, logger="hitl_plugin.steps"):
        assert steps.check_classes(rnd, str(base), "path", names, "v0001") is True
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "hitl_plugin.steps"]
    assert "detects 80 classes (person, bicycle" in warning
    assert f"has 2 ({', '.join(names)})" in warning and "head is rebuilt" in warning
    # the training itself: Ultralytics rebuilds the head for the dataset's classes
    result = train(data, tmp_path / "out", weights=base, epochs=1, imgsz=64, batch=4)
    assert yolo.checkpoint_names(result["checkpoint"]) == names
    assert steps.check_classes(rnd, result["checkpoint"], "path", names, "v0001") is False

    # the pipeline's own promoted checkpoint with other classes: the dataset changed under it
    promote(root, "p", base, {"map50_95": 0.5}, "run1")
    promoted, source = steps.warm_start(rnd)
    assert source == "promoted"
    with pytest.raises(ConfigError) as err:
        steps.check_classes(rnd, promoted, source, names, "v0002")
    text = str(err.value)
    assert "promoted checkpoint" in text and "detects 80 classes" in text
    assert "v0002 has 2" in text and "PROMOTED.json" in text
