"""A small DAG in a real Airflow ``dag.test()`` run against the real Label Studio: the submit
operator mapped with ``.expand`` over batches, the deferrable sensor (its trigger runs inline)
while SIMULATED annotators label, then collection."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hitl_plugin.labeling.client import LabelStudioClient
from hitl_plugin.schemas import Corrections, SelectionManifest, write_json_atomic
from tests.integration.people import SimulatedPeople

DAG_ID = "hitl_labeling_dag_test"

DAG_FILE = '''
import json, os
from airflow.sdk import DAG, task
from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator
from hitl_plugin.sensors.label_studio import LabelsReadySensor

CONFIG = os.environ["HITL_TEST_CONFIG"]
SELECTION = os.environ["HITL_TEST_SELECTION"]
BATCHES = [{"selection": SELECTION, "start": 0, "stop": 3},
           {"selection": SELECTION, "start": 3, "stop": 5}]

with DAG("%s", schedule=None, render_template_as_native_obj=True) as dag:
    submit = SubmitForLabelingOperator.partial(
        task_id="submit", config_path=CONFIG, model_version="dagtest-m1",
    ).expand(batch=BATCHES)
    wait = LabelsReadySensor(task_id="wait", config_path=CONFIG, submissions=submit.output,
                             poke_interval=0.5, completion="{{ 'all' }}")
    collect = CollectCorrectionsOperator(task_id="collect", config_path=CONFIG,
                                         selection=SELECTION,
                                         submissions=submit.output)

    @task
    def record(submitted, waited, collected):
        with open(os.environ["HITL_TEST_OUT"], "w") as fh:
            json.dump({"submit": list(submitted), "wait": waited, "collect": collected}, fh)

    submit >> wait >> collect
    record(submit.output, wait.output, collect.output)

if __name__ == "__main__":
    run = dag.test()
    print("RUN_STATE", run.state, run.run_id)
''' % DAG_ID


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_dag_env):
    """A fresh Airflow home with a migrated SQLite database and a dags folder."""
    home = tmp_path_factory.mktemp("airflow-labeling")
    return home, airflow_dag_env(home, {"labeling_dag.py": DAG_FILE})


def _selection(root: Path) -> tuple[Path, dict]:
    items = [{"image_id": 500 + i, "file_name": f"dagtest/{i}.png", "width": 96, "height": 64,
              "split": "train", "reason": "label_error", "score": 0.9,
              "suspicions": [{"kind": "missing", "score": 0.9, "pred_category_id": 1}],
              "predictions": [{"bbox": [5.0, 6.0, 20.0, 10.0], "category_id": 1,
                               "score": 0.8}]} for i in range(5)]
    selection = SelectionManifest(
        dag_id=DAG_ID, run_id="prepared", dataset="dagtest", version="v0001",
        model_version="dagtest-m1", categories=[{"id": 1, "name": "circle"},
                                                {"id": 2, "name": "square"}],
        strategy="label_error", budget=5, seed=0, items=items)
    path = write_json_atomic(root / "prepared" / "selection.json", selection)
    truth = {"categories": [c.model_dump() for c in selection.categories],
             "images": [{"id": s.image_id, "width": 96, "height": 64} for s in selection.items],
             "annotations": [{"id": s.image_id, "image_id": s.image_id, "category_id": 2,
                              "bbox": [10.0, 10.0, 30.0, 20.0]} for s in selection.items]}
    return path, truth


@pytest.mark.slow
def test_submit_expand_sensor_collect_in_dag_test(label_studio, airflow_env, tmp_path):
    home, env = airflow_env
    root = label_studio.root
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "storage": {"root": str(root)},
        "labeling": {"timeout_hours": 0.1, "poke_interval": 0.5},
        "schedule": {"cron": None}}))
    selection, truth = _selection(tmp_path)
    out = tmp_path / "xcom.json"
    env = {**env, "HITL_TEST_CONFIG": str(config), "HITL_TEST_SELECTION": str(selection),
           "HITL_TEST_OUT": str(out),
           "AIRFLOW_CONN_LABEL_STUDIO_DEFAULT": json.dumps({
               "conn_type": "label_studio", "host": label_studio.url,
               "password": label_studio.token})}

    client = LabelStudioClient(label_studio.url, label_studio.token)
    began = time.monotonic()
    with SimulatedPeople(label_studio, f"hitl-{DAG_ID}", truth, timeout=120, skip_rate=0.2,
                         seed=2, latency=1.0) as people:
        proc = subprocess.run([sys.executable, str(home / "dags" / "labeling_dag.py")],
                              env=env, capture_output=True, text=True, timeout=400)
    summary = people.summary
    seconds = time.monotonic() - began
    assert "RUN_STATE success" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert label_studio.token not in proc.stdout + proc.stderr  # never logged
    run_id = proc.stdout.split("RUN_STATE success", 1)[1].split()[0]
    logs = proc.stdout + proc.stderr
    assert "Deferring until the round is done" in logs  # the wait went to the trigger
    xcom = json.loads(out.read_text())
    assert label_studio.token not in json.dumps(xcom)

    submits = sorted(xcom["submit"], key=lambda r: r["batch"])
    assert [(s["batch"], s["submitted"], s["already_present"]) for s in submits] == [
        ([0, 3], 3, 0), ([3, 5], 2, 0)]
    project = submits[0]["project_id"]
    assert xcom["wait"]["complete"] and xcom["wait"]["total"] == 5
    assert xcom["wait"]["completed"] == 5
    collected = xcom["collect"]
    skipped = {e["image_id"] for e in summary["entries"] if e["skipped"]}
    assert collected["labeled"] == 5 - len(skipped) and collected["skipped"] == len(skipped)
    assert collected["rejected"] == 0 and collected["pending"] == 0
    corrections = Corrections.model_validate_json(Path(collected["corrections"]).read_text())
    assert corrections.run_id == run_id
    for item in corrections.items:
        if item.status == "labeled":
            assert [b.category_id for b in item.boxes] == [2]
            assert item.boxes[0].bbox == pytest.approx([10, 10, 30, 20], abs=1e-3)
    tasks = list(client.iter_tasks(project, fields="task_only"))
    assert sorted(t["data"]["hitl_key"] for t in tasks) == sorted(
        f"{DAG_ID}|{run_id}|{500 + i}" for i in range(5))
    assert client.get_project(project)["model_version"] == "dagtest-m1"
    print(f"labeling DAG run took {seconds:.0f} s")
