"""The distributed mode run for real, natively: PostgreSQL, Redis, Airflow on the
CeleryExecutor with one ``default`` and two ``gpu`` workers, the same DAG file as the
embedded mode, a real Label Studio and SIMULATED people.

One round, two faults: the ``gpu`` worker that is training is killed mid-training (the retry
on the other ``gpu`` worker resumes from the last checkpoint on the shared storage), and the
triggerer is killed during the wait (the wait resumes with the same deadline).

``make test`` runs this module last (``scripts/run_tests.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from hitl_dev.distributed import DistributedStack
from hitl_dev.labelstudio import free_port
from hitl_dev.simulator import simulate
from hitl_dev.stack import AirflowApi
from hitl_dev.synth import generate, load_truth
from hitl_plugin.labeling.client import LabelStudioClient
from hitl_plugin.paths import Layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "hitl_distributed"
#: enough epochs (~0.5 s each here) that the worker is lost mid-training
EPOCHS = 25


def _wait(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_round_on_celery_workers_survives_a_lost_gpu_worker_and_triggerer(
        label_studio, tmp_path):
    root = Path(label_studio.root)
    source = tmp_path / "source"
    generate(source, train=40, val=16, pool=24, classes=3, imgsz=64, noise=0.25, seed=21)
    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "hitl_pipelines.py", dags)
    (dags / "configs" / "distributed.yaml").write_text(yaml.safe_dump({
        "dag_id": DAG_ID, "storage": {"root": str(root)},
        "dataset": {"name": "distributed", "source_dir": str(source)},
        "training": {"epochs": EPOCHS, "imgsz": 64, "batch": 8, "queue": "gpu"},
        "selection": {"budget": 6, "audit_fraction": 0.0, "seed": 2},
        "labeling": {"batch_size": 3, "poke_interval": 1, "timeout_hours": 0.3},
        "schedule": {"cron": None}}))
    stack = DistributedStack(
        base=tmp_path / "stack", storage=root, api_port=free_port(), pg_port=free_port(),
        redis_port=free_port(), dags_folder=dags, extra_env={
            # notice a lost worker in seconds, not in 5 minutes
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2"})
    began = time.monotonic()
    stack.start()
    airflow = stack.airflow()
    layout = Layout.at(root)
    done = threading.Event()
    try:
        api = AirflowApi(airflow.url, "admin", airflow.password())
        run_id = api.start_round(DAG_ID, label_studio_url=label_studio.url,
                                 token=label_studio.token)
        paths = layout.round(DAG_ID, run_id)

        # 1. the gpu worker that trains is lost after the first epoch's checkpoint
        first = _wait("the first training try's worker record",
                      lambda: next(iter(paths.workers.glob("train.-1.1.json")), None), 300)
        trainer = json.loads(first.read_text())["hostname"]
        assert trainer.startswith("worker-gpu-"), trainer
        model = paths.model()
        _wait("the first epoch's checkpoint", lambda: model.last.is_file()
              and model.epochs.is_file() and model.epochs.read_text().strip(), 300, 0.1)
        assert len(stack.kill_worker(trainer)) >= 3  # the worker, its pool, the task
        epochs_at_kill = len(model.epochs.read_text().splitlines())
        assert epochs_at_kill < EPOCHS  # lost mid-training

        # 2. the retry runs on the other gpu worker; then the wait defers to the triggerer
        def wait_state():
            tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)
                   if t.get("map_index", -1) == -1}
            return tis.get("wait_for_labels", {}).get("state")

        _wait("the wait to defer", lambda: wait_state() == "deferred", 600, 2)
        deadline = json.loads(paths.wait_deadline("wait_for_labels").read_text())["deadline"]
        # the triggerer dies mid-wait and comes back
        os.killpg(int((airflow.run_dir / "triggerer.pid").read_text()), signal.SIGKILL)
        time.sleep(3)
        airflow.start_component("triggerer", airflow.env())
        truth = load_truth(source)
        project = LabelStudioClient(label_studio.url, label_studio.token).find_project(
            f"hitl-{DAG_ID}")["id"]
        simulate(label_studio.url, label_studio.token, project, truth, accuracy=0.9,
                 until_empty=True, timeout=120, poll=0.5)
        run = api.wait_run(DAG_ID, run_id, timeout=600, poll=2)
        tis = {(t["task_id"], t.get("map_index", -1)): t
               for t in api.task_instances(DAG_ID, run_id)}
        assert run["state"] == "success", {k: t["state"] for k, t in tis.items()}
    finally:
        done.set()
        stack.stop()
    seconds = time.monotonic() - began

    # which worker ran each task, from the round's own records (the report lists them)
    report = json.loads(paths.report.read_text())
    by_try = {(w["task_id"], w["try_number"]): w for w in report["workers"]}
    second = by_try[("train", 2)]
    assert second["hostname"].startswith("worker-gpu-") and second["hostname"] != trainer
    assert tis[("train", -1)]["try_number"] == 2
    assert by_try[("score", 1)]["hostname"].startswith("worker-gpu-")
    assert {w["hostname"] for w in report["workers"]
            if w["task_id"] in ("prepare", "select", "collect", "merge")} == {"worker-default"}
    # the retry resumed from the checkpoint the lost worker left on the shared storage
    result = json.loads(paths.model().result.read_text())
    assert 1 <= (result["resumed_from_epoch"] or 0) <= epochs_at_kill + 1, (result,
                                                                           epochs_at_kill)
    assert result["epochs"] == EPOCHS
    # the wait resumed in the new triggerer with the same deadline, without a retry
    assert tis[("wait_for_labels", -1)]["try_number"] == 1
    assert json.loads(paths.wait_deadline("wait_for_labels").read_text())["deadline"] == deadline
    assert report["new_version"] == "v0002"
    print(f"distributed round with two faults: {seconds:.0f} s including the stack's start")
