"""The deferrable sensor under the REAL triggerer (not ``dag.test()``'s inline triggers): the
trigger class must import from the installed package, read its connection asynchronously and
resume the task. Submit (mapped) -> wait -> collect, against the real Label Studio, while
SIMULATED annotators label slowly enough that the sensor defers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from hitl_dev.labelstudio import free_port
from hitl_dev.simulator import simulate
from hitl_dev.stack import AirflowApi, AirflowStack
from hitl_plugin.labeling.client import LabelStudioClient
from hitl_plugin.schemas import SelectionManifest, write_json_atomic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "hitl_labeling_triggerer_test"

DAG_FILE = '''
import json, os
from airflow.sdk import DAG, task
from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator
from hitl_plugin.sensors.label_studio import LabelsReadySensor

CONFIG = os.environ["HITL_TEST_CONFIG"]
SELECTION = os.environ["HITL_TEST_SELECTION"]

with DAG("%s", schedule=None, render_template_as_native_obj=True) as dag:
    submit = SubmitForLabelingOperator.partial(task_id="submit", config_path=CONFIG).expand(
        batch=[{"selection": SELECTION, "start": 0, "stop": 2},
               {"selection": SELECTION, "start": 2, "stop": 4}])
    wait = LabelsReadySensor(task_id="wait", config_path=CONFIG, submissions=submit.output)
    collect = CollectCorrectionsOperator(task_id="collect", config_path=CONFIG,
                                         selection=SELECTION, submissions=submit.output)

    @task
    def record(waited, collected):
        with open(os.environ["HITL_TEST_OUT"], "w") as fh:
            json.dump({"wait": waited, "collect": collected}, fh)

    submit >> wait >> collect
    record(wait.output, collect.output)
''' % DAG_ID


def _round(label_studio, tmp_path, *, first_id: int, model_version: str, labeling: dict):
    """Four selected images, their truth (for the SIMULATED annotators), the pipeline config
    and a stack that serves DAG_FILE on them; not started."""
    items = [{"image_id": first_id + i, "file_name": f"trig/{i}.png", "width": 80,
              "height": 60, "split": "pool", "reason": "uncertainty", "score": 0.6,
              "predictions": [{"bbox": [5.0, 5.0, 20.0, 20.0], "category_id": 1,
                               "score": 0.5}]} for i in range(4)]
    selection = write_json_atomic(tmp_path / "selection.json", SelectionManifest(
        dag_id=DAG_ID, run_id="prepared", dataset="trig", version="v0001",
        model_version=model_version, categories=[{"id": 1, "name": "circle"}],
        strategy="uncertainty", budget=4, seed=0, items=items))
    truth = {"categories": [{"id": 1, "name": "circle"}],
             "images": [{"id": first_id + i, "width": 80, "height": 60} for i in range(4)],
             "annotations": [{"id": i + 1, "image_id": first_id + i, "category_id": 1,
                              "bbox": [10.0, 10.0, 30.0, 20.0]} for i in range(4)]}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "storage": {"root": str(label_studio.root)},
        "schedule": {"cron": None}, "labeling": labeling}))
    out = tmp_path / "xcom.json"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "labeling_triggerer_dag.py").write_text(DAG_FILE)
    stack = AirflowStack(tmp_path / "home", port=free_port(), dags_folder=dags, extra_env={
        "HITL_TEST_CONFIG": str(config), "HITL_TEST_SELECTION": str(selection),
        "HITL_TEST_OUT": str(out)})
    return truth, out, stack


def _trigger(stack, label_studio) -> tuple[AirflowApi, str]:
    """Give the started stack the Label Studio connection and trigger one run."""
    api = AirflowApi(stack.url, "admin", stack.password())
    return api, api.start_round(DAG_ID, label_studio_url=label_studio.url,
                                token=label_studio.token)


def test_sensor_defers_to_the_real_triggerer_and_resumes(label_studio, tmp_path):
    truth, out, stack = _round(label_studio, tmp_path, first_id=700,
                               model_version="trig-m1",
                               labeling={"timeout_hours": 0.1, "poke_interval": 1.0})
    client = LabelStudioClient(label_studio.url, label_studio.token)
    done, summary = threading.Event(), {}
    stack.start()
    try:
        api, run_id = _trigger(stack, label_studio)

        def annotators():
            project = None
            while project is None and not done.is_set():
                found = client.find_project(f"hitl-{DAG_ID}")
                project = found and found["id"]
                done.wait(0.5)
            # Slow people: the sensor's first poke finds the round unfinished and defers.
            done.wait(4)
            if project is not None and not done.is_set():
                summary.update(simulate(label_studio.url, label_studio.token, project, truth,
                                        until_empty=True, timeout=120, stop_event=done,
                                        poll=0.5, latency=0.5))

        thread = threading.Thread(target=annotators, daemon=True)
        thread.start()
        run = api.wait_run(DAG_ID, run_id, timeout=300, poll=2)
        done.set()
        thread.join(30)
        tis = {(t["task_id"], t.get("map_index", -1)): t
               for t in api.task_instances(DAG_ID, run_id)}
        assert run["state"] == "success", {k: t["state"] for k, t in tis.items()}
    finally:
        done.set()
        stack.stop()

    assert tis[("wait", -1)]["try_number"] == 1  # resumed by the trigger, not by a retry
    logs = "\n".join(p.read_text(errors="replace") for p in (stack.airflow_home / "logs").rglob(
        "*.log") if "task_id=wait" in str(p))
    assert "Deferring until the round is done" in logs
    trigger_logs = "\n".join(p.read_text(errors="replace") for p in (
        stack.airflow_home / "logs").rglob("*.trigger.*log") if "task_id=wait" in str(p))
    assert "Trigger fired event" in trigger_logs  # the triggerer ran our trigger
    triggerer = (stack.run_dir / "triggerer.log").read_text(errors="replace")
    assert "ModuleNotFoundError" not in triggerer and label_studio.token not in triggerer
    xcom = json.loads(Path(out).read_text())
    assert xcom["wait"]["complete"] and xcom["wait"]["completed"] == 4
    assert xcom["collect"]["labeled"] == 4 and xcom["collect"]["rejected"] == 0


def test_the_wait_survives_a_killed_triggerer_and_a_label_studio_outage(label_studio,
                                                                       tmp_path):
    """Issue 13, suite items 3 and 4: while the round waits, the triggerer is killed with
    SIGKILL and Label Studio is stopped; the triggerer comes back while Label Studio is still
    down (its polls fail and back off), then Label Studio comes back. The wait resumes with
    the same deadline, the round succeeds, and no task is duplicated."""
    import os
    import signal
    import time

    truth, out, stack = _round(label_studio, tmp_path, first_id=800,
                               model_version="trig-m2",
                               labeling={"timeout_hours": 0.2, "poke_interval": 1.0,
                                         "project_title": "hitl-trig-faults"})
    client = LabelStudioClient(label_studio.url, label_studio.token)
    server = label_studio.server
    stack.start()
    try:
        api, run_id = _trigger(stack, label_studio)

        def wait_state() -> str | None:
            tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}
            return tis.get("wait", {}).get("state")

        limit = time.monotonic() + 240
        while wait_state() != "deferred" and time.monotonic() < limit:
            time.sleep(1)
        assert wait_state() == "deferred"
        from hitl_plugin.paths import Layout

        deadline_file = Layout.at(label_studio.root).round(DAG_ID, run_id).wait_deadline("wait")
        deadline = json.loads(deadline_file.read_text())["deadline"]

        # the triggerer dies mid-wait, and Label Studio goes down
        triggerer = int((stack.run_dir / "triggerer.pid").read_text())
        os.killpg(triggerer, signal.SIGKILL)
        server.stop()
        time.sleep(5)
        stack.start_component("triggerer")  # back, while Label Studio is still down

        def trigger_logs() -> str:
            return "\n".join(p.read_text(errors="replace") for p in (
                stack.airflow_home / "logs").rglob("*.trigger.*log") if "task_id=wait" in str(p))

        # its trigger polls the dead server, backing off (waited for, not slept: a loaded
        # machine may take longer than 15 s to start a triggerer)
        limit = time.monotonic() + 180
        while "Polling Label Studio failed" not in trigger_logs() and time.monotonic() < limit:
            time.sleep(1)
        assert wait_state() == "deferred"
        server.start(timeout=240)  # back after ~20 s down

        project = client.find_project("hitl-trig-faults")["id"]
        simulate(label_studio.url, label_studio.token, project, truth, until_empty=True,
                 timeout=120, poll=0.5)
        run = api.wait_run(DAG_ID, run_id, timeout=300, poll=2)
        tis = {(t["task_id"], t.get("map_index", -1)): t
               for t in api.task_instances(DAG_ID, run_id)}
        assert run["state"] == "success", {k: t["state"] for k, t in tis.items()}
    finally:
        stack.stop()
        if not server.status()["running"]:
            server.start(timeout=240)  # the session's other tests need it

    assert tis[("wait", -1)]["try_number"] == 1  # resumed by the trigger, not retried
    assert json.loads(deadline_file.read_text())["deadline"] == deadline  # same deadline
    tasks = list(client.iter_tasks(project, (), fields="task_only"))
    assert len(tasks) == 4 and len({t["data"]["hitl_key"] for t in tasks}) == 4  # no dupes
    assert "Polling Label Studio failed" in trigger_logs()  # it polled the dead server
    xcom = json.loads(Path(out).read_text())
    assert xcom["wait"]["complete"] and xcom["collect"]["labeled"] == 4
