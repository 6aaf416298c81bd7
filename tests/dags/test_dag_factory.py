"""The DAG file: parses fast, without heavy imports, and isolates bad configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "hitl_pipelines.py"


def _dagbag(folder: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_shipped_dag_parses_with_the_round_tasks():
    bag = _dagbag(DAG_FILE)
    assert bag.import_errors == {}
    dag = bag.dags["hitl_shapes"]
    assert {"prepare", "train", "gate", "score", "select", "submit", "wait_for_labels",
            "collect", "merge", "report"} <= set(dag.task_dict)
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.task_dict["submit"].__class__.__name__ == "MappedOperator"
    assert dag.task_dict["wait_for_labels"].deferrable if hasattr(
        dag.task_dict["wait_for_labels"], "deferrable") else True
    assert set(dag.params) == {"budget", "strategy", "epochs", "imgsz", "completion",
                               "min_fraction"}
    merge_outlets = dag.task_dict["merge"].outlets
    assert [a.uri for a in merge_outlets] == ["hitl://datasets/shapes"]


def test_params_are_validated():
    from airflow.sdk import ParamsDict

    dag = _dagbag(DAG_FILE).dags["hitl_shapes"]
    params = ParamsDict(dag.params)
    params.update({"epochs": 3, "strategy": "random", "budget": 7})
    params.validate()
    with pytest.raises(Exception, match="strategy|enum"):
        bad = ParamsDict(dag.params)
        bad.update({"strategy": "coin-flip"})
        bad.validate()


def test_bad_config_is_an_import_error_and_spares_the_other_dags(tmp_path):
    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    shutil.copy(REPO / "dags" / "configs" / "shapes.yaml", dags / "configs")
    (dags / "configs" / "broken.yaml").write_text(
        "dag_id: broken\ntraining:\n  epochs: zero\nlabeling:\n  colour: red\n")
    bag = _dagbag(dags)
    assert "hitl_shapes" in bag.dag_ids and "hitl_config_errors" not in bag.dag_ids
    (error,) = bag.import_errors.values()
    assert "broken.yaml" in error
    assert "training.epochs: Input should be a valid integer" in error
    assert "labeling.colour: unknown field" in error


def test_dag_file_parses_without_heavy_imports():
    """Parse the DAG file in fresh interpreters; print the time (no threshold: shared CPUs)."""
    from hitl_dev.bench.dagparse import measure

    result = measure(DAG_FILE, repeats=2)
    print("DAG file parse:", result)
    assert result["dags"] == ["hitl_shapes"] and result["import_errors"] == 0
    assert result["heavy_modules_imported"] == []


def test_training_queue_from_config(tmp_path):
    """The distributed mode sends training and scoring to the GPU workers' queue."""
    import yaml

    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    config = yaml.safe_load((REPO / "dags" / "configs" / "shapes.yaml").read_text())
    config["training"]["queue"] = "gpu"
    (dags / "configs" / "shapes.yaml").write_text(yaml.safe_dump(config))
    dag = _dagbag(dags).dags["hitl_shapes"]
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues["train"] == queues["score"] == queues["retrain"] == "gpu"
    assert queues["submit"] != "gpu" and queues["merge"] != "gpu"


def test_a_config_that_is_not_utf8_is_one_import_error_naming_it(tmp_path):
    """Issue 13, defect 10: one such file used to hide every pipeline."""
    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    shutil.copy(REPO / "dags" / "configs" / "shapes.yaml", dags / "configs")
    (dags / "configs" / "latin1.yaml").write_bytes("dag_id: caf\xe9\n".encode("latin-1"))
    bag = _dagbag(dags)
    assert "hitl_shapes" in bag.dag_ids
    (error,) = bag.import_errors.values()
    assert "latin1.yaml: not UTF-8 text" in error


def _dags_with(tmp_path, monkeypatch, **changes):
    """The shipped DAG file over a copy of shapes.yaml with ``changes`` (top-level sections);
    the tests' recording notifier importable."""
    import yaml

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    config = yaml.safe_load((REPO / "dags" / "configs" / "shapes.yaml").read_text())
    config.update(changes)
    (dags / "configs" / "shapes.yaml").write_text(yaml.safe_dump(config))
    return _dagbag(dags)


def test_approval_task_waits_once_and_the_gate_reads_its_answer(tmp_path, monkeypatch):
    """Issue 16.4: response_timeout (not execution_timeout), no retry into a second wait, a
    default answer for the timeout, the people, and a gate that always runs after it."""
    from datetime import timedelta

    recorder = {"class": "hitl_recording_notifier.RecordingNotifier",
                "args": {"path": str(tmp_path / "calls.jsonl")}}
    bag = _dags_with(tmp_path, monkeypatch, gate={"require_approval": True, "approval": {
        "response_timeout_hours": 6, "assigned_users": ["alice", {"id": "3", "name": "Bob"}],
        "on_reject": "keep_current"}}, notifications={"notifiers": [recorder]})
    assert bag.import_errors == {}
    dag = bag.dags["hitl_shapes"]
    approve, gate = dag.task_dict["approve_checkpoint"], dag.task_dict["gate"]
    assert type(approve).__name__ == "CheckpointApprovalOperator"
    assert approve.response_timeout == timedelta(hours=6) and approve.execution_timeout is None
    assert approve.retries == 0 and dag.task_dict["train"].retries == 1
    assert approve.defaults == ["Reject"]
    assert approve.assigned_users == [{"id": "alice", "name": "alice"},
                                      {"id": "3", "name": "Bob"}]
    assert [n.event for n in approve.notifiers] == ["approval_requested"]
    assert approve.upstream_task_ids == {"train"} and gate.upstream_task_ids == {
        "train", "approve_checkpoint"}
    assert gate.trigger_rule == "all_success" and approve.downstream_task_ids == {"gate"}
    assert [c.event for c in dag.on_failure_callback] == ["round_failed"]

    plain = _dags_with(tmp_path / "plain", monkeypatch).dags["hitl_shapes"]
    assert "approve_checkpoint" not in plain.task_dict and plain.on_failure_callback is None
    assert plain.task_dict["gate"].approval is None


def test_a_notifier_that_cannot_be_built_is_the_configs_import_error(tmp_path, monkeypatch):
    bag = _dags_with(tmp_path, monkeypatch, notifications={"notifiers": [
        {"class": "hitl_recording_notifier.RecordingNotifier", "args": {"path": 5}}]})
    (error,) = bag.import_errors.values()
    assert "shapes.yaml: notifications.notifiers.0: hitl_recording_notifier.RecordingNotifier " \
        "cannot be built from its args: TypeError: path must be a file path" in error
    bag = _dags_with(tmp_path / "b", monkeypatch, notifications={"notifiers": [
        {"class": "hitl_recording_notifier.Missing"}]})
    (error,) = bag.import_errors.values()
    assert "notifications.notifiers.0.class: Value error, cannot import " \
        "'hitl_recording_notifier.Missing'" in error


def _shapes_dag(tmp_path, **sections):
    import yaml

    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    config = yaml.safe_load((REPO / "dags" / "configs" / "shapes.yaml").read_text())
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    (dags / "configs" / "shapes.yaml").write_text(yaml.safe_dump(config))
    bag = _dagbag(dags)
    assert bag.import_errors == {}
    return bag.dags["hitl_shapes"]


def test_the_drift_step_runs_between_score_and_select_and_emits_on_its_asset(tmp_path):
    dag = _shapes_dag(tmp_path)
    drift, event, select = (dag.task_dict[t] for t in ("detect_drift", "drift_event",
                                                       "select"))
    assert "score" in drift.upstream_task_ids and "detect_drift" in select.upstream_task_ids
    assert event.upstream_task_ids == {"detect_drift"} and not event.downstream_task_ids
    assert [a.uri for a in event.outlets] == ["hitl://drift/shapes"]
    assert drift.outlets == [] and select.outlets == []  # only a detection emits an event
    # not scheduled on its own drift Asset unless the config opts in
    assert "hitl://drift/shapes" not in repr(dag.timetable)


def test_drift_disabled_leaves_the_round_as_it_was(tmp_path):
    dag = _shapes_dag(tmp_path, drift={"enabled": False})
    assert "detect_drift" not in dag.task_dict and "drift_event" not in dag.task_dict
    assert dag.task_dict["select"].drift is None


def test_on_drift_schedules_the_pipeline_on_the_drift_asset(tmp_path):
    from airflow.sdk import Asset

    dag = _shapes_dag(tmp_path, schedule={"on_drift": True, "on_new_version": True,
                                          "cron": None})
    uris = {a.uri for a in dag.timetable.asset_condition.iter_assets().values()} if hasattr(
        dag.timetable.asset_condition, "iter_assets") else set()
    if not uris:  # older SDKs: the condition's objects
        uris = {o.uri for o in dag.timetable.asset_condition.objects if isinstance(o, Asset)}
    assert uris == {"hitl://drift/shapes", "hitl://datasets/shapes"}
    only = _shapes_dag(tmp_path / "b", schedule={"on_drift": True, "cron": "0 2 * * *"})
    assert "hitl://drift/shapes" in repr(only.timetable.asset_condition)
