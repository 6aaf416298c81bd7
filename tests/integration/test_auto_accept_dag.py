"""A round with ``selection.auto_accept`` on, in a real Airflow ``dag.test()`` run against the
real Label Studio: score -> select -> submit (mapped) -> wait (deferred) -> collect -> merge.
The model labels its confident pool images alone, SIMULATED annotators label the rest, and
the merged version holds pseudo-labels with provenance ``model``."""

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

DAG_ID = "hitl_auto_accept_test"

DAG_FILE = '''
import json, os
from airflow.sdk import DAG, task
from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator
from hitl_plugin.operators.merge import MergeCorrectionsOperator
from hitl_plugin.operators.selection import ScoreSamplesOperator, SelectSamplesOperator
from hitl_plugin.sensors.label_studio import LabelsReadySensor

CONFIG = os.environ["HITL_TEST_CONFIG"]
with DAG("%s", schedule=None, render_template_as_native_obj=True) as dag:
    score = ScoreSamplesOperator(task_id="score", config_path=CONFIG,
                                 checkpoint=os.environ["HITL_TEST_CKPT"], version="v0001")
    select = SelectSamplesOperator(task_id="select", config_path=CONFIG,
                                   scores=score.output["scores"], version="v0001",
                                   model_version="aa-m1")

    @task
    def batches(batch_list):  # as the pipeline DAG does: a mapped task needs a return value
        return batch_list

    submit = SubmitForLabelingOperator.partial(
        task_id="submit", config_path=CONFIG, model_version="aa-m1",
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
    def record(selected, collected, merged):
        with open(os.environ["HITL_TEST_OUT"], "w") as fh:
            json.dump({"select": selected, "collect": collected, "merge": merged}, fh)

    wait >> collect
    record(select.output, collect.output, merge.output)

if __name__ == "__main__":
    run = dag.test()
    print("RUN_STATE", run.state, run.run_id)
''' % DAG_ID


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_dag_env):
    home = tmp_path_factory.mktemp("airflow-auto-accept")
    return home, airflow_dag_env(home, {"auto_accept_dag.py": DAG_FILE})


def test_auto_accept_round_merges_pseudo_labels_with_provenance(label_studio, airflow_env,
                                                              tmp_path):
    home, env = airflow_env
    root = Path(label_studio.root)
    name = f"aa{time.time_ns()}"
    src = tmp_path / "src"
    generate(src, train=12, val=8, pool=16, classes=4, imgsz=64, noise=0.0, seed=31)
    DatasetStore(root, name).import_source(src)
    config = tmp_path / "pipeline.yaml"
    # a low fixed threshold, so that the base checkpoint's boxes on these small images are
    # accepted on some pool images (calibration is covered by the unit tests and the bench)
    config.write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "storage": {"root": str(root)}, "dataset": {"name": name},
        "training": {"device": "cpu", "imgsz": 64},
        "selection": {"strategy": "uncertainty", "budget": 3, "audit_fraction": 0.0,
                      "auto_accept": True, "auto_accept_threshold": 0.3,
                      "auto_accept_max_images": 4},
        "merge": {"model_weight": 0.25},
        "labeling": {"timeout_hours": 0.1, "poke_interval": 0.5, "batch_size": 2},
        "schedule": {"cron": None}}))
    truth = json.loads((src / "annotations" / "pool_truth.json").read_text())
    out = tmp_path / "xcom.json"
    env = {**env, "HITL_TEST_CONFIG": str(config), "HITL_TEST_CKPT": str(BUILTIN_BASE),
           "HITL_TEST_OUT": str(out),
           "AIRFLOW_CONN_LABEL_STUDIO_DEFAULT": json.dumps({
               "conn_type": "label_studio", "host": label_studio.url,
               "password": label_studio.token})}
    with SimulatedPeople(label_studio, f"hitl-{DAG_ID}", truth, seed=4):
        proc = subprocess.run([sys.executable, str(home / "dags" / "auto_accept_dag.py")],
                              env=env, capture_output=True, text=True, timeout=500)
    assert "RUN_STATE success" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    xcom = json.loads(out.read_text())
    manifest = SelectionManifest.model_validate_json(
        Path(xcom["select"]["selection"]).read_text())
    assert manifest.auto_accept.threshold == 0.3 and manifest.auto_accept.source == "config"
    auto = {a.image_id: a for a in manifest.auto_accepted}
    assert 1 <= len(auto) <= 4
    people = {s.image_id for s in manifest.items}
    assert len(people) == 3 and not people & set(auto)  # nobody sees the model's images
    assert xcom["collect"]["labeled"] == 3 + len(auto)

    store = DatasetStore(root, name)
    version = xcom["merge"]["version"]
    coco = store.load(version)
    images = {i["id"]: i for i in coco["images"]}
    pseudo = [a for a in coco["annotations"] if a.get("source") == "model"]
    assert {a["image_id"] for a in pseudo} == set(auto)
    assert len(pseudo) == sum(len(a.boxes) for a in auto.values())
    for ann in pseudo:
        assert ann["provenance"]["model_version"] == "aa-m1"
        assert ann["provenance"]["score"] >= 0.3
    for image_id in auto:
        assert images[image_id]["hitl_split"] == "train"
        assert images[image_id]["weight"] == 0.25
        assert "hitl_verified_round" not in images[image_id]
    for image_id in people:  # the people's images are verified, at the human weight
        if any(c["image_id"] == image_id and c["status"] == "labeled"
               for c in json.loads(Path(xcom["collect"]["corrections"]).read_text())["items"]):
            assert images[image_id]["hitl_verified_round"] == 2
    report = json.loads(Path(xcom["merge"]["report"]).read_text())
    assert report["counts"]["auto_labeled_images"] == len(auto)
    assert store.manifest(version)["counts"]["sources"]["model"] == len(pseudo)
