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


def test_the_drift_step_tests_each_pool_image_once(tmp_path, caplog):
    """A pool image is tested by the first round that scores it: what later rounds leave
    in the pool (the images selection did not take) is no sample of the world."""
    import numpy as np

    from hitl_plugin.model.drift import DriftInputs

    rng = np.random.default_rng(0)

    def inputs(pool_ids: list[int]) -> DriftInputs:
        ids = list(range(10_000, 10_060)) + pool_ids
        n = len(ids)
        n_boxes = rng.poisson(3, n)
        return DriftInputs(np.array(ids), np.array(["heldout"] * 60 + ["pool"] * len(pool_ids)),
                           n_boxes, rng.uniform(0.3, 0.9, n),
                           rng.multinomial(n_boxes, [0.5, 0.5]), rng.normal(size=(n, 4)),
                           np.array([1, 2]))

    config = parse_config({"dag_id": "p", "dataset": {"name": "birds"},
                           "drift": {"permutations": 99, "min_images": 30}})

    def drift_round(run_id: str, pool_ids: list[int]) -> dict:
        rnd = steps.Round(config, tmp_path, "p", run_id)
        scores = rnd.paths.scores
        scores.parent.mkdir(parents=True, exist_ok=True)
        inputs(pool_ids).save(rnd.paths.drift_inputs)
        steps.drift(rnd, scores=str(scores), version="v0001")
        return json.loads(rnd.paths.drift.read_text())

    first = drift_round("r1", list(range(100)))
    assert first["n_pool"] == 100 and first["n_pool_tested_before"] == 0
    assert first["verdict"] in ("drift", "no_drift") and len(first["ood"]) == 100
    # the same round again (a retry) still tests its own pool
    assert drift_round("r1", list(range(100)))["n_pool"] == 100
    # the next round's pool: 60 images the first left, none new: nothing to test
    second = drift_round("r2", list(range(40, 100)))
    assert second["verdict"] == "too_few_images" and second["n_pool"] == 0
    assert second["n_pool_tested_before"] == 60
    assert "60 more pool image(s) left out: an earlier round tested them" in second["reason"]
    # 50 new images arrive: they are tested, the 60 left over are not
    third = drift_round("r3", list(range(40, 150)))
    assert third["n_pool"] == 50 and third["n_pool_tested_before"] == 60
    assert sorted(map(int, third["ood"])) == list(range(100, 150))
    # another pipeline on the same dataset counts them as tested too; an unreadable report
    # of a round is said and skipped
    broken = tmp_path / "rounds" / "q" / "bad" / "drift.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    other = steps.Round(config.model_copy(update={"dag_id": "q"}), tmp_path, "q", "x")
    assert steps.drift_tested_before(other) == set(range(150))
    assert "Could not read" in caplog.text and "bad" in caplog.text
