"""YoloTrainOperator and PromoteModelOperator in real Airflow ``dag.test()`` runs with a real
(tiny) Ultralytics training; and the module imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hitl_plugin.model.train import BUILTIN_BASE
from hitl_plugin.paths import safe_component


def test_operators_validate_and_template_their_arguments():
    from hitl_plugin.operators.model import PromoteModelOperator, YoloTrainOperator

    from hitl_plugin.exceptions import ArgumentError
    from hitl_plugin.templated import optional_int

    assert set(YoloTrainOperator.template_fields) == {"config_path", "version", "epochs",
                                                      "imgsz"}
    assert set(PromoteModelOperator.template_fields) == {"config_path", "candidate", "approval"}
    with pytest.raises(TypeError):
        YoloTrainOperator("c.yaml", task_id="t")  # keyword-only
    with pytest.raises(ValueError):
        PromoteModelOperator(task_id="g", config_path="", candidate={})
    assert optional_int("None", "epochs", 1) is None and optional_int(None, "e", 1) is None
    assert optional_int("3", "epochs", 1) == 3
    with pytest.raises(ArgumentError, match="epochs must be at least 1"):
        optional_int("0", "epochs", 1)
    with pytest.raises(ArgumentError, match="epochs must be an integer"):
        optional_int("many", "epochs", 1)


DAG_FILE = '''
import json, os
from airflow.sdk import DAG, Param, task
from hitl_plugin.operators.model import PromoteModelOperator, YoloTrainOperator

CONFIG = os.environ["HITL_TEST_CONFIG"]
with DAG("hitl_model_test", schedule=None, render_template_as_native_obj=True,
         params={"epochs": Param(1, type="integer"), "imgsz": Param(64, type="integer")}) as dag:
    train = YoloTrainOperator(task_id="train", config_path=CONFIG, version="v0001",
                              epochs="{{ params.epochs }}", imgsz="{{ params.imgsz }}")
    gate = PromoteModelOperator(task_id="gate", config_path=CONFIG, candidate=train.output)

    @task
    def record(trained, gated, **context):
        with open(os.environ["HITL_TEST_OUT"], "a") as fh:
            fh.write(json.dumps({"run_id": context["run_id"], "train": trained,
                                 "gate": gated}) + "\\n")

    record(train.output, gate.output)

if __name__ == "__main__":
    for _ in range(2):
        run = dag.test()
        print("RUN_STATE", run.state)
'''


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_dag_env):
    """A fresh Airflow home with a migrated SQLite database and a dags folder."""
    home = tmp_path_factory.mktemp("airflow")
    return home, airflow_dag_env(home, {"model_dag.py": DAG_FILE})


@pytest.mark.slow
@pytest.mark.integration
def test_train_evaluate_gate_twice_in_dag_test(airflow_env, tmp_path):
    from hitl_dev.base_checkpoint import tiny_export
    from hitl_plugin.paths import ModelPaths

    home, env = airflow_env
    _, _, root = tiny_export(tmp_path, train=16, val=6, imgsz=64, classes=2, seed=8)
    # The packaged base checkpoint has 4 classes; this dataset has 2: warm start must cope.
    base = "builtin" if BUILTIN_BASE.is_file() else None
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": "hitl_model_test", "storage": {"root": str(root)},
        "dataset": {"name": "tiny"}, "model": {"base_checkpoint": base},
        "training": {"device": "cpu", "batch": 8, "epochs": 5, "imgsz": 160},
        "gate": {"margin": 0.0}, "schedule": {"cron": None}}))
    out = tmp_path / "xcom.jsonl"
    env = {**env, "HITL_TEST_CONFIG": str(config), "HITL_TEST_OUT": str(out)}
    proc = subprocess.run([sys.executable, str(home / "dags" / "model_dag.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.stdout.count("RUN_STATE success") == 2, (proc.stdout[-3000:]
                                                         + proc.stderr[-3000:])
    first, second = (json.loads(line) for line in out.read_text().splitlines())

    train = first["train"]
    assert train["epochs"] == 1  # the run's Param, not the config's 5
    assert train["weights_source"] == ("builtin" if base else "scratch")
    assert train["version"] == "v0001" and train["resumed_from_epoch"] is None
    model_dir = root / "models" / "hitl_model_test"
    assert Path(train["model_dir"]).parent == model_dir
    assert Path(train["checkpoint"]).is_file()
    model = ModelPaths(Path(train["model_dir"]))
    metrics = json.loads(model.metrics.read_text())
    assert metrics == train["metrics"] and metrics["n_images"] == 6
    assert set(metrics["per_class"]) == {"square", "circle"}
    assert len(model.epochs.read_text().splitlines()) == 1
    # the checkpoint's metadata records its lineage
    lineage = json.loads(model.result.read_text())["lineage"]
    assert lineage == train["lineage"]
    assert lineage["dataset"] == "tiny" and lineage["version"] == "v0001"
    assert lineage["seed"] == 0 and len(lineage["config_sha256"]) == 64
    assert lineage["package_version"] not in ("", "unknown")

    gate = first["gate"]
    assert gate["promoted"] is True and gate["model_version"] == f"hitl_model_test/" \
        f"{first['run_id']}"
    history = [json.loads(line) for line in
               (model_dir / "promoted" / "history.jsonl").read_text().splitlines()]
    assert history[0]["checkpoint"] == gate["checkpoint"] and Path(gate["checkpoint"]).is_file()
    assert history[0]["metrics"] == metrics
    assert history[0]["lineage"] == lineage  # the promoted copy keeps its lineage

    # The second round warm-starts from the promoted checkpoint; the gate compares.
    assert second["train"]["weights_source"] == "promoted"
    better = second["train"]["metrics"]["map50_95"] > metrics["map50_95"]
    assert second["gate"]["promoted"] is better
    assert len(history) == (2 if better else 1)
    kept = second["gate"]["checkpoint"]
    assert kept == (json.loads((model_dir / "PROMOTED.json").read_text())["checkpoint"])
    winner = second if better else first
    assert Path(kept).name == f"{safe_component(winner['run_id'])}.pt"
