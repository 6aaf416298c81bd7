"""LabelsReadySensor: pokes once, defers with an absolute deadline kept across retries, and
turns trigger events into results or typed errors. Against the local stub (the real server
is in tests/integration)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred
from hitl_plugin.sensors.label_studio import LabelsNotReadyError, LabelsReadySensor

from hitl_plugin.triggers.label_studio import LabelsReadyTrigger


@pytest.fixture
def setup(stub_ls, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_LS_STUB", json.dumps(
        {"conn_type": "label_studio", "host": stub_ls.url, "password": stub_ls.token}))
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": "d", "storage": {"root": str(tmp_path / "root")},
        "labeling": {"timeout_hours": 2, "poke_interval": 7, "completion": "fraction",
                     "min_fraction": 0.5, "on_timeout": "continue"}}))
    return stub_ls, str(config), tmp_path


def context(max_tries: int = 1) -> dict:
    return {"dag": SimpleNamespace(dag_id="d"), "run_id": "r",
            "ti": SimpleNamespace(max_tries=max_tries)}


SUBMITS = [{"project_id": 1, "submitted": 2, "already_present": 0, "batch": [0, 2]},
           {"project_id": 1, "submitted": 1, "already_present": 1, "batch": [2, 4]}]


def sensor(config: str, **kw) -> LabelsReadySensor:
    return LabelsReadySensor(task_id="wait", config_path=config, submissions=SUBMITS,
                             label_studio_conn_id="ls_stub", **kw)


def test_done_at_the_first_poke_returns_counts_without_deferring(setup):
    stub, config, _ = setup
    stub.add_tasks("d", "r", [1, 2, 3, 4], annotated={1, 2, 3}, skipped={4})
    result = sensor(config).execute(context())
    assert result["complete"] and result["total"] == 4 and result["completed"] == 4
    assert result["annotated"] == 3 and result["skipped"] == 1 and result["project_id"] == 1


def test_defers_with_an_absolute_deadline_kept_across_retries(setup):
    stub, config, tmp = setup
    stub.add_tasks("d", "r", [1, 2, 3, 4], annotated={1})
    began = datetime.now(timezone.utc)
    with pytest.raises(TaskDeferred) as first:
        sensor(config).execute(context(max_tries=1))
    trigger = first.value.trigger
    assert isinstance(trigger, LabelsReadyTrigger) and first.value.method_name == \
        "execute_complete"
    _, kwargs = trigger.serialize()
    assert kwargs["expected"] == 4 and kwargs["project_id"] == 1 and kwargs["run_id"] == "r"
    assert (kwargs["completion"], kwargs["min_fraction"], kwargs["on_timeout"]) == \
        ("fraction", 0.5, "continue")
    assert kwargs["poke_interval"] == 7.0  # from the config
    deadline = datetime.fromisoformat(kwargs["deadline"])
    assert timedelta(hours=2) <= deadline - began < timedelta(hours=2, seconds=5)
    # an automatic retry (same try series) keeps the deadline ...
    with pytest.raises(TaskDeferred) as retry:
        sensor(config).execute(context(max_tries=1))
    assert retry.value.trigger.serialize()[1]["deadline"] == kwargs["deadline"]
    # ... a manual clear (Airflow raises max_tries) starts a new one
    with pytest.raises(TaskDeferred) as cleared:
        sensor(config, timeout=60).execute(context(max_tries=3))
    new = datetime.fromisoformat(cleared.value.trigger.serialize()[1]["deadline"])
    assert new - began < timedelta(seconds=90)
    # templated policy values arrive as text and win over the config
    with pytest.raises(TaskDeferred) as templated:
        sensor(config, completion="all", min_fraction="1.0", on_timeout="fail",
               poke_interval=0.5).execute(context())
    kw = templated.value.trigger.serialize()[1]
    assert (kw["completion"], kw["min_fraction"], kw["on_timeout"], kw["poke_interval"]) == \
        ("all", 1.0, "fail", 0.5)


def test_execute_complete_results_and_typed_errors(setup):
    _, config, _ = setup
    op = sensor(config)
    ok = op.execute_complete(context(), {"status": "partial", "total": 4, "completed": 3,
                                         "annotated": 3, "skipped": 0, "fraction": 0.75,
                                         "deadline": "x", "message": "m"}, project_id=1)
    assert ok == {"project_id": 1, "total": 4, "completed": 3, "annotated": 3, "skipped": 0,
                  "fraction": 0.75, "complete": False, "deadline": "x"}
    with pytest.raises(LabelsNotReadyError, match=r"\(service_unavailable\): down"):
        op.execute_complete(context(), {"status": "error", "error_type": "service_unavailable",
                                        "error": "down", "total": 4, "completed": 0,
                                        "deadline": "x"})


def test_poke_mode_without_deferral(setup):
    stub, config, _ = setup
    stub.add_tasks("d", "r", [1, 2, 3, 4], annotated={1, 2, 3, 4})
    op = sensor(config, deferrable=False, poke_interval=0.1)
    assert op.poke(context()).xcom_value["complete"]


def test_arguments_are_checked(setup):
    _, config, _ = setup
    with pytest.raises(ValueError):
        LabelsReadySensor(task_id="w")
    with pytest.raises(TypeError):
        LabelsReadySensor("c.yaml", task_id="w")  # keyword-only
    from hitl_plugin.exceptions import ArgumentError

    with pytest.raises(ArgumentError, match="completion"):
        sensor(config, completion="most").execute(context())
    with pytest.raises(ArgumentError, match="min_fraction"):
        sensor(config, min_fraction="2").execute(context())
    with pytest.raises(ArgumentError, match="one Label Studio project"):
        LabelsReadySensor(task_id="w", config_path=config, submissions=[
            {"project_id": 1}, {"project_id": 2}], label_studio_conn_id="ls_stub"
        ).execute(context())
    assert {"submissions", "completion", "min_fraction", "label_studio_conn_id"} <= set(
        LabelsReadySensor.template_fields)


def test_first_poke_during_an_outage_defers_a_refusal_fails(setup):
    stub, config, _ = setup
    stub.fault("GET", "/api/tasks/", status=503, times=100)
    with pytest.raises(TaskDeferred):
        sensor(config).execute(context())
    stub.state.faults.clear()
    stub.fault("GET", "/api/tasks/", status=400, times=100)
    with pytest.raises(LabelsNotReadyError, match="refused the first poke"):
        sensor(config).execute(context())


def test_poke_mode_waits_out_blips_like_the_trigger(setup):
    """Issue 13, defect 4: the non-deferrable poke treats errors as the trigger does."""
    stub, config, _ = setup
    stub.add_tasks("d", "r", [1, 2, 3, 4], annotated={1, 2, 3, 4})
    stub.fault("GET", "/api/tasks/", raw=b"<html>maintenance</html>", times=100)
    op = sensor(config, deferrable=False, poke_interval=0.1)
    assert op.poke(context()) is False  # polls on
    stub.state.faults.clear()
    stub.fault("GET", "/api/tasks/", status=401, times=100)
    with pytest.raises(LabelsNotReadyError, match=r"\(auth\)"):
        op.poke(context())
    stub.state.faults.clear()
    assert op.poke(context()).xcom_value["complete"]


def test_tells_people_the_tasks_are_ready_and_the_deadline_is_near(setup, monkeypatch):
    """Issue 16.5: ``labeling_ready`` once per round when the wait starts; with
    ``near_deadline_hours`` the trigger carries the warning time, and its ``deadline_near``
    event makes the sensor tell people once, then defer again to the same deadline."""
    from pathlib import Path

    from airflow.sdk import DAG

    stub, config, tmp = setup
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import hitl_recording_notifier as rec
    data = yaml.safe_load(open(config))
    calls = tmp / "calls.jsonl"
    data["notifications"] = {"near_deadline_hours": 0.5, "notifiers": [
        {"class": "hitl_recording_notifier.FailingNotifier"},
        {"class": "hitl_recording_notifier.RecordingNotifier", "args": {"path": str(calls)}}]}
    open(config, "w").write(yaml.safe_dump(data))
    stub.add_tasks("d", "r", [1, 2, 3, 4], annotated={1})
    ctx = {**context(), "dag": DAG("d", schedule=None)}
    with pytest.raises(TaskDeferred) as first:
        sensor(config).execute(ctx)
    kwargs = first.value.trigger.serialize()[1]
    deadline = datetime.fromisoformat(kwargs["deadline"])
    assert datetime.fromisoformat(kwargs["warn_at"]) == deadline - timedelta(hours=0.5)
    (ready,) = rec.read(calls)
    assert ready["event"] == "labeling_ready" and ready["run_id"] == "r"
    assert ready["url"] == f"{stub.url}/projects/1/data"
    assert ready["subject"] == "[hitl] d: 4 labeling task(s) ready"
    with pytest.raises(TaskDeferred):  # a retry does not tell people twice
        sensor(config).execute(ctx)
    assert len(rec.read(calls)) == 1

    near = {"status": "deadline_near", "total": 4, "completed": 1, "annotated": 1,
            "skipped": 0, "fraction": 0.25, "deadline": kwargs["deadline"], "message": "m"}
    with pytest.raises(TaskDeferred) as again:
        sensor(config).execute_complete(ctx, near, project_id=1, url=stub.url)
    kw = again.value.trigger.serialize()[1]
    assert kw["deadline"] == kwargs["deadline"] and kw["warn_at"] is None
    assert again.value.method_name == "execute_complete"
    warned = rec.read(calls)[-1]
    assert warned["event"] == "deadline_near" and "3 of 4 labeling task(s) are not done" in \
        warned["message"]
    with pytest.raises(TaskDeferred) as retried:  # warned already: no warning time again
        sensor(config).execute(ctx)
    assert retried.value.trigger.serialize()[1]["warn_at"] is None
    assert [c["event"] for c in rec.read(calls)] == ["labeling_ready", "deadline_near"]
