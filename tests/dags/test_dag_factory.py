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
