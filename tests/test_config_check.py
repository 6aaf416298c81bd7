"""`hitl config check` and the shipped JSON Schema: what an engineer editing YAML meets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from hitl_plugin.config import SCHEMA_FILE, schema_text

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "dags" / "configs").glob("*.yaml"))
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.M)


def _hitl(*args: str) -> subprocess.CompletedProcess:
    # tests/ on the path: the test notifiers (hitl_recording_notifier) are importable
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run([sys.executable, "-m", "hitl_dev.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def test_shipped_schema_is_up_to_date():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "hitl_plugin/assets/pipeline.schema.json is out of date with hitl_plugin/config.py: "
        "run `hitl config schema --out hitl_plugin/assets/pipeline.schema.json`")


def test_example_configs_point_editors_at_the_shipped_schema():
    assert CONFIGS
    for path in CONFIGS:
        match = MODELINE.search(path.read_text(encoding="utf-8"))
        assert match, f"{path} lacks the yaml-language-server modeline"
        target = path.parent / match.group(1)  # in this tree: the file the package ships
        assert target.is_file() and target.read_text() == SCHEMA_FILE.read_text()


def _schema_errors(data) -> set[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    return {".".join(str(p) for p in err.absolute_path) or err.message
            for err in validator.iter_errors(data)}


def test_schema_accepts_the_examples_and_flags_what_pydantic_flags():
    for path in CONFIGS:
        assert _schema_errors(yaml.safe_load(path.read_text())) == set()
    # An editor flags the same fields as the loader: a wrong type, a value out of range, an
    # unknown choice. (Unknown keys are flagged through additionalProperties.)
    bad = {"dag_id": "x", "training": {"epochs": "ten", "imgsz": 8},
           "selection": {"strategy": "coin-flip"}}
    assert _schema_errors(bad) == {"training.epochs", "training.imgsz", "selection.strategy"}
    unknown = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).iter_errors(
        {"dag_id": "x", "labeling": {"colour": "red"}})
    assert any("colour" in err.message for err in unknown)
    assert _schema_errors({"training": {}}) == {"'dag_id' is a required property"}


def test_config_check_prints_every_error_as_airflow_shows_them(tmp_path, monkeypatch):
    from hitl_plugin.dag_factory import build_dags

    monkeypatch.syspath_prepend(str(REPO / "tests"))

    folder = tmp_path / "configs"
    folder.mkdir()
    good = folder / "a_good.yaml"
    good.write_text((REPO / "dags" / "configs" / "shapes.yaml").read_text())
    (folder / "b_types.yaml").write_text(
        "dag_id: b\ntraining:\n  epochs: zero\nlabeling:\n  colour: red\n")
    (folder / "c_yaml.yaml").write_text("dag_id: c\ntraining: [epochs: 3\n")
    (folder / "d_dup.yaml").write_text("dag_id: hitl_shapes\n")
    # valid as a file, but its notifier cannot be built: an error only building the DAG finds
    (folder / "e_notifier.yaml").write_text(
        "dag_id: e\nnotifications:\n  notifiers:\n"
        "    - class: hitl_recording_notifier.RecordingNotifier\n      args: {path: 123}\n")
    files = sorted(str(p) for p in folder.glob("*.yaml"))
    proc = _hitl("config", "check", *files)
    assert proc.returncode == 1, proc.stderr
    assert f"ok: {good} (dag_id hitl_shapes)" in proc.stdout
    assert "1 valid, 4 invalid" in proc.stderr
    # the same texts as the DAG file's import error in Airflow
    airflow_errors = build_dags(folder)["hitl_config_errors"].hitl_errors
    assert len(airflow_errors) == 4
    for error in airflow_errors:
        assert error in proc.stderr
    assert "b_types.yaml: 2 invalid field(s)" in proc.stderr
    assert "training.epochs: Input should be a valid integer" in proc.stderr
    assert "labeling.colour: unknown field (check the spelling)" in proc.stderr
    assert "c_yaml.yaml: line 3, column 1" in proc.stderr and "invalid YAML" in proc.stderr
    assert "d_dup.yaml: dag_id 'hitl_shapes' is used by another config" in proc.stderr
    assert ("e_notifier.yaml: notifications.notifiers.0: hitl_recording_notifier."
            "RecordingNotifier cannot be built from its args: TypeError") in proc.stderr
    assert "Traceback" not in proc.stderr

    ok = _hitl("config", "check", str(good))
    assert ok.returncode == 0 and "1 valid, 0 invalid" in ok.stdout
    missing = _hitl("config", "check", str(folder / "nope.yaml"))
    assert missing.returncode == 1 and "nope.yaml: cannot read" in missing.stderr


def test_config_schema_command_writes_the_shipped_file(tmp_path):
    out = tmp_path / "schema.json"
    proc = _hitl("config", "schema", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == SCHEMA_FILE.read_text()
