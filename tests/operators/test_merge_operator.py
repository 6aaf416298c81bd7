"""MergeCorrectionsOperator: light to import, default outlet, and a real ``dag.test()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.schemas import Corrections, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "manual__2026-01-01T00:00:00+00:00"

_DAG_FILE = textwrap.dedent('''
    import json, os
    from datetime import datetime, timezone
    from airflow.sdk import DAG
    from hitl_plugin.operators.merge import MergeCorrectionsOperator

    with DAG("t_merge", schedule=None) as dag:
        MergeCorrectionsOperator(
            task_id="merge", config_path=os.environ["T_CONFIG"],
            corrections=os.environ["T_CORRECTIONS"], base_version="v0001")

    def _state():
        from airflow.models.asset import AssetEvent
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        with create_session() as s:
            events = [{"uri": e.asset.uri, "extra": e.extra} for e in s.query(AssetEvent)]
            (xcom,) = [x.value for x in s.query(XComModel).filter_by(
                dag_id="t_merge", task_id="merge", key="return_value")]
        return {"events": events, "xcom": xcom}

    if __name__ == "__main__":
        when = datetime(2026, 1, 1, tzinfo=timezone.utc)
        runs = []
        for _ in range(2):  # the second run of the same run id is a retry of the merge
            dr = dag.test(run_after=when, logical_date=when)
            runs.append({"state": str(dr.state), "run_id": dr.run_id, **_state()})
        print("RESULT " + json.dumps(runs, default=str))
''')


def test_default_outlet_is_the_dataset_asset(tmp_path):
    from hitl_plugin.operators.merge import MergeCorrectionsOperator

    from hitl_plugin.assets_uri import dataset_asset, dataset_asset_uri

    config = tmp_path / "p.yaml"
    config.write_text("dag_id: p\ndataset:\n  name: birds\n")
    op = MergeCorrectionsOperator(task_id="m", config_path=str(config), corrections="x.json",
                                  base_version="v0001")
    assert [a.uri for a in op.outlets] == ["hitl://datasets/birds"] == [dataset_asset_uri("birds")]
    assert op.outlets == [dataset_asset("birds")]
    assert set(op.template_fields) == {"config_path", "corrections", "base_version"}
    templated = MergeCorrectionsOperator(
        task_id="n", config_path="{{ var.value.cfg }}", corrections={}, base_version=None,
        dataset="cats")
    assert [a.uri for a in templated.outlets] == ["hitl://datasets/cats"]
    with pytest.raises(ValueError, match="corrections is required"):
        MergeCorrectionsOperator(task_id="o", config_path=str(config), corrections=None,
                                 base_version="v0001")


def test_corrections_must_be_the_collect_steps_file(tmp_path):
    """One shape: the collect step's ``corrections`` path; anything else fails clearly."""
    from types import SimpleNamespace

    from hitl_plugin.operators.merge import MergeCorrectionsOperator

    from hitl_plugin.exceptions import ArgumentError

    config = tmp_path / "p.yaml"
    config.write_text(f"dag_id: p\nstorage:\n  root: {tmp_path}\n")
    context = {"dag": SimpleNamespace(dag_id="p"), "run_id": "r"}
    for value, says in (({"corrections": "x.json"}, "corrections must be a text"),
                        ("", "corrections is required"), ("None", "corrections is required")):
        op = MergeCorrectionsOperator(task_id="m", config_path=str(config), corrections=value)
        with pytest.raises(ArgumentError, match=says):
            op.execute(context)


def _source(folder: Path) -> Path:
    """Four train images with a box each and two pool images, as ``hitl synth`` lays out."""
    from PIL import Image

    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    (folder / "annotations").mkdir(parents=True)
    for split, ids in (("train", range(1, 5)), ("val", range(5, 7)), ("pool", range(7, 9))):
        (folder / "images" / split).mkdir(parents=True)
        images, anns = [], []
        for i in ids:
            Image.new("RGB", (64, 48)).save(folder / "images" / split / f"{i}.png")
            images.append({"id": i, "file_name": f"{split}/{i}.png", "width": 64, "height": 48})
            if split != "pool":
                anns.append({"id": i, "image_id": i, "category_id": 1, "area": 200.0,
                             "bbox": [4.0, 6.0, 20.0, 10.0], "iscrowd": 0})
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
    return folder


def test_dag_test_merges_emits_the_asset_event_and_a_retry_changes_nothing(tmp_path):
    source = _source(tmp_path / "src")
    root = tmp_path / "root"
    store = DatasetStore(root, "shapes")
    store.import_source(source)
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"dag_id: t_merge\nstorage:\n  root: {root}\ndataset:\n  name: shapes\n")
    corr = Corrections(dag_id="t_merge", run_id=RUN_ID, dataset="shapes", version="v0001",
                       items=[{"image_id": 1, "status": "labeled", "task_id": 1,
                               "annotator": "alice",
                               "boxes": [{"bbox": [1, 1, 5, 5], "category_id": 2}]},
                              {"image_id": 7, "status": "labeled", "task_id": 2,
                               "annotator": "bob",
                               "boxes": [{"bbox": [2, 2, 5, 5], "category_id": 1}]},
                              {"image_id": 2, "status": "skipped", "task_id": 3}])
    corrections = write_json_atomic(tmp_path / "corrections.json", corr)
    home, dags = tmp_path / "airflow", tmp_path / "dags"
    dags.mkdir()
    (dags / "t_merge.py").write_text(_DAG_FILE)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "T_CONFIG": str(config),
           "T_CORRECTIONS": str(corrections)}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, str(dags / "t_merge.py")], env=env, text=True,
                          capture_output=True, timeout=400)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = json.loads(lines[-1][len("RESULT "):])

    assert first["state"] == second["state"] == "success"
    assert first["run_id"] == second["run_id"] == RUN_ID
    assert first["xcom"] == second["xcom"]  # the retry returns the very same result
    result = first["xcom"]
    assert isinstance(result, dict), result
    assert {k: result[k] for k in ("version", "parent", "round", "images_corrected",
                                   "pool_labeled", "skipped", "conflicts", "rejected")} == {
        "version": "v0002", "parent": "v0001", "round": 2, "images_corrected": 2,
        "pool_labeled": 1, "skipped": 1, "conflicts": 0, "rejected": 0}
    report = store.layout.round("t_merge", RUN_ID).merge_report
    assert result["report"] == str(report) and json.loads(report.read_text())["version"] == "v0002"
    extra = {"version": "v0002", "parent": "v0001", "round": 2}
    assert first["events"] == [{"uri": "hitl://datasets/shapes", "extra": extra}]
    assert second["events"] == first["events"] * 2  # an event per success, same version
    # nothing new on the retry: one new version, LATEST on it
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    coco = store.load()
    assert [a["annotator"] for a in coco["annotations"] if a["image_id"] == 7] == ["bob"]
