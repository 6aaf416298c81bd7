"""SubmitForLabelingOperator and CollectCorrectionsOperator: light imports, keyword-only
validated arguments, templated fields, argument parsing. (They run against the real Label
Studio in tests/integration/test_labeling_dag.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import AirflowException
from hitl_plugin.operators.labeling import (
    CollectCorrectionsOperator,
    SubmitForLabelingOperator,
    _model_version,
    project_title,
)

from hitl_plugin.labeling.submit import project_and_expected, submitted_results

HEAVY = ("torch", "ultralytics", "pycocotools", "cv2", "matplotlib", "requests",
         "hitl_plugin.labeling.client")


def test_importing_the_operators_imports_nothing_heavy():
    code = ("import sys, json; import hitl_plugin.operators.labeling as m; "
            "import hitl_plugin.sensors.label_studio; "
            "m.SubmitForLabelingOperator, m.CollectCorrectionsOperator; "
            f"print(json.dumps([h for h in {HEAVY!r} if h in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert [h for h in heavy if h != "requests"] == []  # requests may come with Airflow


def test_lazy_exports():
    from hitl_plugin import operators, sensors

    assert operators.SubmitForLabelingOperator is SubmitForLabelingOperator
    assert operators.CollectCorrectionsOperator is CollectCorrectionsOperator
    assert sensors.LabelsReadySensor.__name__ == "LabelsReadySensor"


def test_arguments_are_keyword_only_validated_and_templated():
    assert set(SubmitForLabelingOperator.template_fields) == {
        "config_path", "batch", "model_version", "label_studio_conn_id"}
    assert {"selection", "submissions", "label_studio_conn_id"} <= set(
        CollectCorrectionsOperator.template_fields)
    with pytest.raises(TypeError):
        SubmitForLabelingOperator("c.yaml", {}, task_id="s")
    with pytest.raises(ValueError):
        SubmitForLabelingOperator(task_id="s", config_path="", batch={})
    with pytest.raises(ValueError):
        CollectCorrectionsOperator(task_id="c", config_path="c.yaml", selection="s.json")
    op = SubmitForLabelingOperator(task_id="s", config_path="c.yaml", batch={"x": 1})
    assert op.label_studio_conn_id == "label_studio_default"


def test_a_bad_batch_fails_clearly(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"dag_id": "d", "storage": {"root": str(tmp_path)}}))
    op = SubmitForLabelingOperator(task_id="s", config_path=str(config), batch={"start": 0})
    with pytest.raises(AirflowException, match="batch must be"):
        op.execute({"dag": SimpleNamespace(dag_id="d"), "run_id": "r"})


def test_argument_parsing():
    assert _model_version({"model_version": "d/r", "checkpoint": "x.pt"}) == "d/r"
    assert _model_version({"checkpoint": "x.pt"}) == "x.pt"
    assert _model_version("None") is None and _model_version("m3") == "m3"
    from hitl_plugin.config import parse_config

    assert project_title(parse_config({"dag_id": "abc"}), "abc") == "hitl-abc"
    titled = parse_config({"dag_id": "abc", "labeling": {"project_title": "Shapes QA"}})
    assert project_title(titled, "abc") == "Shapes QA"
    results = [{"project_id": 4, "submitted": 3, "already_present": 1},
               {"project_id": 4, "submitted": 0, "already_present": 2}]
    assert project_and_expected(iter(results), None) == (4, 6)
    assert project_and_expected(None, "4") == (4, None)
    assert submitted_results({"project_id": 1}) == [{"project_id": 1}]
    with pytest.raises(ValueError):
        project_and_expected([{"project_id": 1}], 2)
    with pytest.raises(ValueError):
        project_and_expected([], None)
