"""The step layer: the round's context, and the steps' own rules (the steps' work itself is
tested through the operators in real ``dag.test()`` runs and the end-to-end round)."""

from __future__ import annotations

import json

import pytest
import yaml

from hitl_plugin import steps
from hitl_plugin.config import parse_config
from hitl_plugin.exceptions import ArgumentError, ConfigError, DatasetError


def test_round_open_finds_config_and_storage_root(tmp_path, monkeypatch):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"dag_id": "p", "dataset": {"name": "birds"}}))
    monkeypatch.setenv("HITL_HOME", str(tmp_path / "home"))
    rnd = steps.Round.open(str(cfg), dag_id="p", run_id="manual__1")
    assert rnd.root == tmp_path / "home" and rnd.config.dataset.name == "birds"
    assert rnd.key == "p|manual__1" and rnd.project_title == "hitl-p"
    assert rnd.paths.dir == tmp_path / "home" / "rounds" / "p" / "manual__1"
    # the Airflow Variable wins over HITL_HOME; the config's storage.root over both
    rnd = steps.Round.open(str(cfg), dag_id="p", run_id="r",
                           variables={"hitl_storage_root": str(tmp_path / "var")}.get)
    assert rnd.root == tmp_path / "var"
    cfg.write_text(yaml.safe_dump({"dag_id": "p", "storage": {"root": "data"}}))
    rnd = steps.Round.open(str(cfg), dag_id="p", run_id="r",
                           variables={"hitl_storage_root": str(tmp_path / "var")}.get)
    assert rnd.root == tmp_path / "data"
    # no config: defaults
    assert steps.Round.open(None, dag_id="q", run_id="r").config.dag_id == "q"
    cfg.write_text("dag_id: p\ntraining:\n  epochs: zero\n")
    with pytest.raises(ConfigError, match="training.epochs"):
        steps.Round.open(str(cfg), dag_id="p", run_id="r")


def test_prepare_without_a_version_or_a_source_names_the_dataset(tmp_path):
    rnd = steps.Round(parse_config({"dag_id": "p"}), tmp_path, "p", "r")
    with pytest.raises(DatasetError, match="'shapes' has no version .*source_dir is not set"):
        steps.prepare(rnd)


def test_warm_start_prefers_promoted_then_base_then_scratch(tmp_path, monkeypatch):
    from hitl_plugin.model import train as train_mod
    from hitl_plugin.model.gate import promote

    ckpt = tmp_path / "some.pt"
    ckpt.write_bytes(b"weights")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("dag_id: p\n")
    root = tmp_path / "root"

    def rnd(base):
        config = parse_config({"dag_id": "p", "model": {"base_checkpoint": base}},
                              source=str(cfg))
        return steps.Round(config, root, "p", "r")

    assert steps.warm_start(rnd(None)) == (None, "scratch")
    assert steps.warm_start(rnd("some.pt")) == (str(ckpt.absolute()), "path")
    with pytest.raises(FileNotFoundError):
        steps.warm_start(rnd("missing.pt"))
    fake_asset = tmp_path / "base.pt"
    fake_asset.write_bytes(b"base")
    monkeypatch.setattr(train_mod, "BUILTIN_BASE", fake_asset)
    assert steps.warm_start(rnd("builtin")) == (str(fake_asset), "builtin")
    record = promote(root, "p", ckpt, {"map50_95": 0.5}, "run1")
    assert steps.warm_start(rnd("builtin")) == (record["checkpoint"], "promoted")


def test_wait_plan_checks_its_choices_and_keeps_the_deadline(tmp_path):
    rnd = steps.Round(parse_config({"dag_id": "p", "labeling": {"poke_interval": 7}}),
                      tmp_path, "p", "r")
    subs = [{"project_id": 3, "submitted": 2, "already_present": 1}]
    plan = steps.plan_wait(rnd, task_id="wait", submissions=subs, try_series=1)
    assert (plan["project_id"], plan["expected"], plan["poke_interval"]) == (3, 3, 7.0)
    again = steps.plan_wait(rnd, task_id="wait", submissions=subs, try_series=1)
    assert again["deadline"] == plan["deadline"]
    assert json.loads(rnd.paths.wait_deadline("wait").read_text())["max_tries"] == 1
    for bad in ({"completion": "most"}, {"on_timeout": "retry"}, {"min_fraction": 0.0}):
        with pytest.raises(ArgumentError):
            steps.plan_wait(rnd, task_id="wait", submissions=subs, **bad)
    with pytest.raises(ArgumentError, match="batch must be"):
        steps.checked_batch({"start": 0})
