"""A round with the drift step, in a real Airflow ``dag.test()`` run against the real Label
Studio: score -> detect_drift (+ drift_event on the drift Asset) -> select -> submit
(mapped) -> wait (deferred) -> collect -> merge, on a pool drawn from a drifted world (new
backgrounds and colours, ``hitl synth --drift``). The step detects the drift from the score
pass's own outputs, the budget doubles, half of it goes to the pool images least like the
held-out set, SIMULATED annotators label them in Label Studio, and an event on
``hitl://drift/<dataset>`` is recorded in Airflow's database. The same DAG on a pool of the
original look detects nothing, selects as before, and emits no event."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hitl_dev.synth import generate
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.model.train import BUILTIN_BASE
from hitl_plugin.schemas import SelectionManifest
from tests.integration.people import SimulatedPeople

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "hitl_drift_test"

DAG_FILE = '''
import json, os
from airflow.sdk import DAG, task
from hitl_plugin.assets_uri import drift_asset
from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator
from hitl_plugin.operators.merge import MergeCorrectionsOperator
from hitl_plugin.operators.selection import (
    DetectDriftOperator, DriftEventOperator, ScoreSamplesOperator, SelectSamplesOperator)
from hitl_plugin.sensors.label_studio import LabelsReadySensor

CONFIG = os.environ["HITL_TEST_CONFIG"]
with DAG("%s", schedule=None, render_template_as_native_obj=True) as dag:
    score = ScoreSamplesOperator(task_id="score", config_path=CONFIG,
                                 checkpoint=os.environ["HITL_TEST_CKPT"], version="v0001")
    drift = DetectDriftOperator(task_id="detect_drift", config_path=CONFIG,
                                scores=score.output["scores"], version="v0001",
                                model_version="drift-m1")
    DriftEventOperator(task_id="drift_event", config_path=CONFIG, drift=drift.output,
                       outlets=[drift_asset(os.environ["HITL_TEST_DATASET"])])
    select = SelectSamplesOperator(task_id="select", config_path=CONFIG,
                                   scores=score.output["scores"], version="v0001",
                                   model_version="drift-m1", drift=drift.output["drift"])

    @task
    def batches(batch_list):
        return batch_list

    submit = SubmitForLabelingOperator.partial(
        task_id="submit", config_path=CONFIG, model_version="drift-m1",
    ).expand(batch=batches(select.output["batches"]))
    wait = LabelsReadySensor(task_id="wait", config_path=CONFIG, submissions=submit.output,
                             poke_interval=0.5, completion="{{ 'all' }}")
    collect = CollectCorrectionsOperator(task_id="collect", config_path=CONFIG,
                                         selection=select.output["selection"],
                                         submissions=submit.output)
    merge = MergeCorrectionsOperator(task_id="merge", config_path=CONFIG,
                                     corrections=collect.output["corrections"],
                                     base_version="v0001")

    @task
    def record(drifted, selected, collected, merged):
        with open(os.environ["HITL_TEST_OUT"], "w") as fh:
            json.dump({"drift": drifted, "select": selected, "collect": collected,
                       "merge": merged}, fh)

    wait >> collect
    record(drift.output, select.output, collect.output, merge.output)

if __name__ == "__main__":
    run = dag.test()
    print("RUN_STATE", run.state, run.run_id)
    from sqlalchemy import select as sql
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    with create_session() as session:
        rows = session.execute(sql(AssetModel.uri, AssetEvent.extra).join(
            AssetEvent, AssetEvent.asset_id == AssetModel.id)).all()
        states = {ti.task_id: ti.state for ti in run.get_task_instances(session=session)}
    print("ASSET_EVENTS " + json.dumps([[uri, extra] for uri, extra in rows]))
    print("TASK_STATES " + json.dumps({k: str(v) for k, v in states.items()}))
''' % DAG_ID


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_dag_env):
    home = tmp_path_factory.mktemp("airflow-drift")
    return home, airflow_dag_env(home, {"drift_dag.py": DAG_FILE})


def _round(label_studio, airflow_env, tmp_path, *, drift: dict | None, seed: int):
    home, env = airflow_env
    root = Path(label_studio.root)
    name = f"drift{time.time_ns()}"
    src = tmp_path / "src"
    generate(src, train=10, val=40, pool=40, classes=4, imgsz=64, noise=0.0, seed=seed,
             drift=drift)
    DatasetStore(root, name).import_source(src)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "storage": {"root": str(root)}, "dataset": {"name": name},
        "training": {"device": "cpu", "imgsz": 64},
        "selection": {"strategy": "uncertainty", "budget": 4, "audit_fraction": 0.0},
        "drift": {"budget_factor": 2.0, "ood_share": 0.5, "min_images": 30},
        "labeling": {"timeout_hours": 0.1, "poke_interval": 0.5, "batch_size": 3,
                     "project_title": f"hitl-drift-{name}"},
        "schedule": {"cron": None}}))
    truth = json.loads((src / "annotations" / "pool_truth.json").read_text())
    out = tmp_path / "xcom.json"
    env = {**env, "HITL_TEST_CONFIG": str(config), "HITL_TEST_CKPT": str(BUILTIN_BASE),
           "HITL_TEST_OUT": str(out), "HITL_TEST_DATASET": name,
           "AIRFLOW_CONN_LABEL_STUDIO_DEFAULT": json.dumps({
               "conn_type": "label_studio", "host": label_studio.url,
               "password": label_studio.token})}
    with SimulatedPeople(label_studio, f"hitl-drift-{name}", truth, seed=5):
        proc = subprocess.run([sys.executable, str(home / "dags" / "drift_dag.py")],
                              env=env, capture_output=True, text=True, timeout=500)
    assert "RUN_STATE success" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
             for line in proc.stdout.splitlines() if line.startswith(("ASSET_EVENTS",
                                                                      "TASK_STATES"))}
    events = [(uri, extra) for uri, extra in lines["ASSET_EVENTS"]
              if uri == f"hitl://drift/{name}"]
    return name, src, json.loads(out.read_text()), events, lines["TASK_STATES"]


def test_a_drifted_pool_is_detected_and_gets_more_people_on_what_changed(
        label_studio, airflow_env, tmp_path):
    name, src, xcom, events, states = _round(
        label_studio, airflow_env, tmp_path, seed=41,
        drift={"kinds": ["background", "colour"], "share": 1.0})
    found = xcom["drift"]
    assert found["detected"] and found["verdict"] == "drift"
    assert found["p_values"]["embedding"] < 0.05 / 4
    report = json.loads(Path(found["drift"]).read_text())
    assert set(report["signals"]) == {"confidence", "box_count", "class_mix", "embedding"}
    assert len(report["ood"]) == 40 and report["n_reference"] == 40
    assert report["action"]["asset"] == f"hitl://drift/{name}"

    manifest = SelectionManifest.model_validate_json(
        Path(xcom["select"]["selection"]).read_text())
    assert manifest.budget == 8 and manifest.drift.base_budget == 4
    reserved = [s for s in manifest.items if s.reason == "drift"]
    assert len(reserved) == 4 == manifest.drift.reserved
    top = sorted(report["ood"].items(), key=lambda kv: (-kv[1], int(kv[0])))[:4]
    assert sorted(s.image_id for s in reserved) == sorted(int(k) for k, _ in top)
    assert xcom["collect"]["labeled"] == 8  # SIMULATED people labeled all of them
    assert xcom["merge"]["pool_labeled"] == 8

    # the event on the drift Asset, with the round and the reason
    assert states["drift_event"].endswith("success")
    assert len(events) == 1
    extra = events[0][1]
    assert extra["version"] == "v0001" and "embedding" in extra["reason"]
    assert extra["p_values"]["embedding"] == found["p_values"]["embedding"]


def test_a_pool_of_the_known_world_is_not_flagged(label_studio, airflow_env, tmp_path):
    _, _, xcom, events, states = _round(label_studio, airflow_env, tmp_path, seed=42,
                                        drift=None)
    assert xcom["drift"]["verdict"] == "no_drift" and not xcom["drift"]["detected"]
    manifest = SelectionManifest.model_validate_json(
        Path(xcom["select"]["selection"]).read_text())
    assert manifest.budget == 4 and manifest.drift.reserved == 0
    assert not any(s.reason == "drift" for s in manifest.items)
    assert states["drift_event"].endswith("skipped") and events == []
