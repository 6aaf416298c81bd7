"""SubmitForLabelingOperator and CollectCorrectionsOperator: keyword-only validated
arguments, templated fields, argument parsing. (They run against the real Label Studio in
tests/integration/test_labeling_dag.py; their imports are checked in
tests/test_import_closure.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator

from hitl_plugin.exceptions import ArgumentError
from hitl_plugin.labeling.submit import project_and_expected


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
    with pytest.raises(ArgumentError, match="batch must be"):
        op.execute({"dag": SimpleNamespace(dag_id="d"), "run_id": "r"})


def test_argument_parsing(tmp_path):
    from hitl_plugin.config import parse_config
    from hitl_plugin.steps import Round

    assert Round(parse_config({"dag_id": "abc"}), tmp_path, "abc", "r").project_title == \
        "hitl-abc"
    titled = parse_config({"dag_id": "abc", "labeling": {"project_title": "Shapes QA"}})
    assert Round(titled, tmp_path, "abc", "r").project_title == "Shapes QA"
    results = [{"project_id": 4, "submitted": 3, "already_present": 1},
               {"project_id": 4, "submitted": 0, "already_present": 2}]
    assert project_and_expected(iter(results), None) == (4, 6)
    assert project_and_expected(None, "4") == (4, None)
    with pytest.raises(ArgumentError, match="one Label Studio project"):
        project_and_expected([{"project_id": 1}], 2)
    with pytest.raises(ArgumentError, match="one Label Studio project"):
        project_and_expected([], None)
    # one shape: a list of the submit step's results (a single dict is not one)
    with pytest.raises(ArgumentError, match="submit step's results"):
        project_and_expected([{"batch": [0, 2]}], None)
