"""Operator extra links: "Open in Label Studio" on submit and wait, "Round report" on merge and
report. Unit checks of the URLs, then a real ``dag.test()``: Airflow computes each link in
the task's process when it ends and keeps it as an XCom, and the API server's own operator
(the deserialized one) reads it back for the task instance, as the UI asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

RUN_ID = "manual__2026-01-01T00:00:00+00:00"
RUN_URL = ("/dags/hitl_shapes/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/plugin/"
           "hitl-run")


def _key(task_id: str, map_index: int = -1):
    return SimpleNamespace(dag_id="hitl_shapes", run_id=RUN_ID, task_id=task_id,
                           map_index=map_index, try_number=1)


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LS_LINKS", json.dumps(
        {"conn_type": "label_studio", "host": "https://ls.example.org/", "password": "t0ken"}))
    path = tmp_path / "p.yaml"
    path.write_text(f"dag_id: hitl_shapes\nstorage:\n  root: {tmp_path}\n")
    return str(path)


def test_the_operators_carry_their_links():
    from hitl_plugin.operators.dataset import RoundReportOperator
    from hitl_plugin.operators.labeling import SubmitForLabelingOperator
    from hitl_plugin.operators.merge import MergeCorrectionsOperator
    from hitl_plugin.sensors.label_studio import LabelsReadySensor

    def names(cls):
        return [link.name for link in cls.operator_extra_links]

    assert names(SubmitForLabelingOperator) == ["Open in Label Studio"]
    assert names(LabelsReadySensor) == ["Open in Label Studio"]
    assert names(MergeCorrectionsOperator) == ["Round report"]
    assert names(RoundReportOperator) == ["Round report"]


def test_round_report_link_is_the_runs_hitl_tab(config, monkeypatch):
    from hitl_plugin.operators.links import RoundReportLink, round_view_url

    assert RoundReportLink().get_link(None, ti_key=_key("report")) == RUN_URL
    # Airflow served under a path ([api] base_url): the link keeps it
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/af/")
    assert RoundReportLink().get_link(None, ti_key=_key("merge")) == "/af" + RUN_URL
    assert round_view_url("d", "a/b", base="") == "/dags/d/runs/a%2Fb/plugin/hitl-run"


def test_label_studio_link_of_a_waiting_sensor(config):
    """While the sensor defers, its link is computed from its wait plan (no XCom yet)."""
    from hitl_plugin.operators.links import LabelStudioProjectLink
    from hitl_plugin.sensors.label_studio import LabelsReadySensor

    sensor = LabelsReadySensor(task_id="wait_for_labels", config_path=config,
                               project_id=5, label_studio_conn_id="ls_links")
    sensor._plan = {"project_id": 11}
    link = LabelStudioProjectLink()
    assert link.get_link(sensor, ti_key=_key("wait_for_labels")) == \
        "https://ls.example.org/projects/11/data"
    sensor._plan = None  # no plan and no XCom reachable: the task's own project_id
    assert link.get_link(sensor, ti_key=_key("wait_for_labels")) == \
        "https://ls.example.org/projects/5/data"
    sensor.project_id, sensor.submissions = None, [{"project_id": 3}, {"project_id": 3}]
    assert link.get_link(sensor, ti_key=_key("wait_for_labels")) == \
        "https://ls.example.org/projects/3/data"
    sensor.submissions = None  # nothing known: no link rather than a wrong one
    assert link.get_link(sensor, ti_key=_key("wait_for_labels")) == ""
    sensor._plan, sensor.label_studio_conn_id = {"project_id": 11}, "no_such_conn"
    assert link.get_link(sensor, ti_key=_key("wait_for_labels")) == ""


_DAG_FILE = textwrap.dedent('''
    import json, os
    from datetime import datetime, timezone
    from airflow.sdk import DAG
    from hitl_plugin.operators.dataset import RoundReportOperator
    from hitl_plugin.operators.labeling import SubmitForLabelingOperator
    from hitl_plugin.sensors.label_studio import LabelsReadySensor

    CONFIG = os.environ["T_CONFIG"]


    class CannedSubmit(SubmitForLabelingOperator):
        """The real operator's links, a canned result (no Label Studio in this test)."""

        def execute(self, context):
            start, stop = self.batch["start"], self.batch["stop"]
            return {"project_id": 40 + start, "submitted": stop - start, "already_present": 0,
                    "batch": [start, stop], "duplicates": 0, "overlapped": 0,
                    "submission": "x"}


    class CannedWait(LabelsReadySensor):
        def execute(self, context):
            return {"project_id": 40, "total": 2, "completed": 2, "annotated": 2,
                    "skipped": 0, "fraction": 1.0, "complete": True, "deadline": "x"}


    class CannedReport(RoundReportOperator):
        def execute(self, context):
            return {"report": "report.json", "plot": "report.png"}


    with DAG("hitl_shapes", schedule=None) as dag:
        submit = CannedSubmit.partial(
            task_id="submit", config_path=CONFIG, label_studio_conn_id="ls_links",
        ).expand(batch=[{"selection": "s.json", "start": 0, "stop": 2},
                        {"selection": "s.json", "start": 2, "stop": 3}])
        wait = CannedWait(task_id="wait_for_labels", config_path=CONFIG, project_id=40,
                          label_studio_conn_id="ls_links")
        report = CannedReport(task_id="report", config_path=CONFIG, base_version="v0001",
                              train={}, gate={}, merge={})
        submit >> wait >> report

    if __name__ == "__main__":
        from sqlalchemy import select
        from airflow.models.taskinstance import TaskInstance
        from airflow.serialization.serialized_objects import DagSerialization
        from airflow.utils.session import create_session

        when = datetime(2026, 1, 1, tzinfo=timezone.utc)
        dr = dag.test(run_after=when, logical_date=when)
        served = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        links = {}
        with create_session() as session:
            for ti in session.scalars(select(TaskInstance).where(
                    TaskInstance.dag_id == "hitl_shapes", TaskInstance.run_id == dr.run_id)):
                task = served.get_task(ti.task_id)
                links[f"{ti.task_id}[{ti.map_index}]"] = {
                    name: task.get_extra_links(ti, name) for name in task.extra_links}
        print("RESULT " + json.dumps({"state": str(dr.state), "run_id": dr.run_id,
                                      "links": links}))
''')


def test_links_resolve_through_airflow(tmp_path):
    root = tmp_path / "root"
    config = tmp_path / "p.yaml"
    config.write_text(f"dag_id: hitl_shapes\nstorage:\n  root: {root}\n")
    home, dags = tmp_path / "airflow", tmp_path / "dags"
    dags.mkdir()
    (dags / "t_links.py").write_text(_DAG_FILE)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "T_CONFIG": str(config),
           "AIRFLOW_CONN_LS_LINKS": json.dumps({"conn_type": "label_studio",
                                                "host": "http://127.0.0.1:8081",
                                                "password": "t0ken"})}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    env.pop("AIRFLOW__API__BASE_URL", None)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, str(dags / "t_links.py")], env=env, text=True,
                          capture_output=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["state"] == "success" and out["run_id"] == RUN_ID
    ls = "http://127.0.0.1:8081/projects"
    assert out["links"] == {
        "submit[0]": {"Open in Label Studio": f"{ls}/40/data"},  # each batch its result's
        "submit[1]": {"Open in Label Studio": f"{ls}/42/data"},
        "wait_for_labels[-1]": {"Open in Label Studio": f"{ls}/40/data"},
        "report[-1]": {"Round report": RUN_URL},
    }
