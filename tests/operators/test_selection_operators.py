"""ScoreSamplesOperator and SelectSamplesOperator in a real Airflow ``dag.test()`` run, with a
real (tiny) Ultralytics model; and the module imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hitl_plugin.schemas import SelectionManifest


def test_operators_validate_and_template_their_arguments():
    from hitl_plugin.operators.selection import ScoreSamplesOperator, SelectSamplesOperator

    from hitl_plugin.exceptions import ArgumentError
    from hitl_plugin.templated import optional_budget

    assert set(ScoreSamplesOperator.template_fields) >= {"checkpoint", "version", "imgsz"}
    assert set(SelectSamplesOperator.template_fields) >= {"scores", "budget", "strategy",
                                                          "model_version"}
    with pytest.raises(TypeError):
        ScoreSamplesOperator("c.yaml", "m.pt", task_id="s")  # keyword-only
    with pytest.raises(ValueError):
        SelectSamplesOperator(task_id="s", config_path="", scores="x", version="v",
                              model_version="m")
    assert optional_budget("None") is None and optional_budget(None) is None
    assert optional_budget("12") == 12 and optional_budget(0.1) == 0.1
    assert optional_budget("0.25") == 0.25
    with pytest.raises(ArgumentError, match="budget"):
        optional_budget("many")


DAG_FILE = '''
import json, os
from airflow.sdk import DAG, Param, task
from hitl_plugin.operators.selection import ScoreSamplesOperator, SelectSamplesOperator

CONFIG = os.environ["HITL_TEST_CONFIG"]
with DAG("hitl_select_test", schedule=None, render_template_as_native_obj=True,
         params={"budget": Param(5, type=["null", "integer"]),
                 "strategy": Param("hybrid", type="string")}) as dag:
    score = ScoreSamplesOperator(task_id="score", config_path=CONFIG,
                                 checkpoint=os.environ["HITL_TEST_CKPT"],
                                 version="v0001", imgsz="{{ 64 }}")
    select = SelectSamplesOperator(task_id="select", config_path=CONFIG,
                                   scores=score.output["scores"],
                                   version=score.output["version"],
                                   model_version="m-1", budget="{{ params.budget }}",
                                   strategy="{{ params.strategy }}")

    @task
    def record(scored, selected):
        with open(os.environ["HITL_TEST_OUT"], "w") as fh:
            json.dump({"score": scored, "select": selected}, fh)

    record(score.output, select.output)

if __name__ == "__main__":
    run = dag.test(run_conf=json.loads(os.environ.get("HITL_TEST_CONF", "{}")))
    print("RUN_STATE", run.state)
'''


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, airflow_dag_env):
    """A fresh Airflow home with a migrated SQLite database and a dags folder."""
    home = tmp_path_factory.mktemp("airflow")
    return home, airflow_dag_env(home, {"select_dag.py": DAG_FILE})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A synthetic dataset imported as v0001, and a model: the shipped base checkpoint when
    it is built, else one trained on the dataset for one epoch (its quality does not matter
    here)."""
    from hitl_dev.base_checkpoint import tiny_export
    from hitl_plugin.model.train import train

    work = tmp_path_factory.mktemp("sel")
    data_yaml, _, root = tiny_export(work, train=16, val=6, pool=8, classes=4, imgsz=64,
                                     noise=0.25, seed=5, name="shapes")
    base = Path(__file__).resolve().parents[2] / "hitl_plugin" / "assets" / "base_yolov8n.pt"
    if base.is_file():
        return work, root, base
    result = train(data_yaml, work / "model", epochs=1, imgsz=64, batch=8, device="cpu")
    return work, root, Path(result["checkpoint"])


@pytest.mark.slow
@pytest.mark.integration
def test_score_then_select_in_dag_test(airflow_env, tiny_model):
    home, env = airflow_env
    work, root, checkpoint = tiny_model
    config = work / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "dag_id": "hitl_select_test", "storage": {"root": str(root)},
        "dataset": {"name": "shapes"}, "training": {"device": "cpu"},
        "selection": {"audit_fraction": 0.2, "pool_share": 0.4, "seed": 3},
        "labeling": {"batch_size": 2}, "schedule": {"cron": None}}))
    out = work / "xcom.json"
    env = {**env, "HITL_TEST_CONFIG": str(config), "HITL_TEST_CKPT": str(checkpoint),
           "HITL_TEST_OUT": str(out), "HITL_TEST_CONF": json.dumps({"budget": 5})}
    proc = subprocess.run([sys.executable, str(home / "dags" / "select_dag.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert "RUN_STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    xcom = json.loads(out.read_text())

    score = xcom["score"]
    assert score["n_images"] == 24 and score["version"] == "v0001"  # 16 train + 8 pool
    lines = Path(score["scores"]).read_text().splitlines()
    assert len(lines) == 24
    assert Path(score["scores"]).parent.parent.name == "hitl_select_test"
    assert Path(score["scores"]).is_relative_to(root / "rounds")

    select = xcom["select"]
    manifest = SelectionManifest.model_validate_json(Path(select["selection"]).read_text())
    assert select["n_selected"] == len(manifest.items) == 5 == manifest.budget
    assert select["by_reason"] == {"uncertainty": 2, "label_error": 2, "audit": 1}
    assert manifest.model_version == "m-1" and manifest.strategy == "hybrid"
    assert manifest.seed == 3 and manifest.dataset == "shapes" and manifest.version == "v0001"
    assert select["batches"] == [
        {"selection": select["selection"], "start": 0, "stop": 2},
        {"selection": select["selection"], "start": 2, "stop": 4},
        {"selection": select["selection"], "start": 4, "stop": 5},
    ]
    assert Path(select["selection"]).parent == Path(score["scores"]).parent
    pool_items = [i for i in manifest.items if i.reason == "uncertainty"]
    assert all(i.split == "pool" for i in pool_items)
    train_items = [i for i in manifest.items if i.reason == "label_error"]
    assert all(i.split == "train" for i in train_items)
    assert train_items[0].score >= train_items[1].score


def test_blank_templated_values_fall_back_to_config():
    from hitl_plugin.exceptions import ArgumentError
    from hitl_plugin.templated import blank, optional_choice, optional_int, required_str

    assert blank(None) and blank("None") and blank("") and not blank("0")
    assert optional_int("None", "imgsz") is None and optional_int("96", "imgsz") == 96
    assert optional_choice("null", "strategy", ("a", "b")) is None
    assert optional_choice("b", "strategy", ("a", "b")) == "b"
    with pytest.raises(ArgumentError, match="strategy must be one of"):
        optional_choice("c", "strategy", ("a", "b"))
    assert required_str("/s.jsonl", "scores") == "/s.jsonl"
    # one shape: a path, not an upstream result that holds one
    with pytest.raises(ArgumentError, match="checkpoint must be a text"):
        required_str({"checkpoint": "/m.pt"}, "checkpoint")
    with pytest.raises(ArgumentError, match="checkpoint is required"):
        required_str("None", "checkpoint")
