"""Files written by airflow-hitl 0.1.0 stay readable, and a round in flight finishes.

``tests/fixtures/storage_0.1.0.tar.gz`` is the JSON of one ``make demo`` round written by the
code before the step layer (commit b9653af): the dataset versions v0001 and v0002, the
promoted-checkpoint record, the trainings' metadata and the round folder (selection,
submissions, wait deadline, corrections, merge report, report). None of them carries a
``schema_version``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from hitl_plugin import steps
from hitl_plugin.config import parse_config
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.model.gate import promoted
from hitl_plugin.paths import Layout, ModelPaths
from hitl_plugin.report import read_reports
from hitl_plugin.schemas import (
    Corrections,
    SchemaError,
    SelectionManifest,
    check_schema,
    read_model,
)

FIXTURE = Path(__file__).parent / "fixtures" / "storage_0.1.0.tar.gz"
DAG_ID = "hitl_shapes"
RUN_ID = "manual__2026-12-01T09:42:30.722760+00:00"


@pytest.fixture
def old_root(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def _round(root: Path) -> steps.Round:
    config = parse_config({"dag_id": DAG_ID, "storage": {"root": str(root)},
                           "dataset": {"name": "shapes"}})
    return steps.Round(config, root, DAG_ID, RUN_ID)


def _drop_version(store: DatasetStore, version: str, latest: str) -> None:
    """Back to the state before the old round's merge (its files are read-only)."""
    folder = store.version_dir(version)
    for path in folder.iterdir():
        os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    shutil.rmtree(folder)
    (store.dir / "LATEST").write_text(latest + "\n")


def test_old_datasets_checkpoint_records_and_reports_read(old_root):
    rnd = _round(old_root)
    store = rnd.store
    assert store.versions() == ["v0001", "v0002"]
    assert steps.prepare(rnd)["version"] == "v0002"  # hash-checked, nothing imported again
    coco = store.load("v0002")
    assert len(coco["images"]) == 500 and "schema_version" not in store.manifest("v0002")
    record = promoted(old_root, DAG_ID)
    assert record["run_id"] == RUN_ID and record["metrics"]["map50_95"] > 0
    paths = rnd.paths
    selection = read_model(SelectionManifest, paths.selection)
    assert selection.schema_version == 0 and len(selection.items) == 50
    corrections = read_model(Corrections, paths.corrections)
    assert len(corrections.items) == 50
    old_train = json.loads(paths.model().result.read_text())
    assert old_train["epochs"] == 10 and "lineage" not in old_train
    (report,) = read_reports(Layout.at(old_root), DAG_ID)
    assert report["run_id"] == RUN_ID and report["new_version"] == "v0002"


def test_a_round_in_flight_at_the_upgrade_finishes_with_the_same_result(old_root):
    """The old round had collected its corrections; the merge and the report run with the
    new code. Every image ends up with the boxes 0.1.0 published; the labels people left
    unchanged now keep their exact coordinates and are stamped verified (the rule since the
    review issue), where 0.1.0 rewrote them as new human boxes."""
    rnd = _round(old_root)
    store = rnd.store
    old = store.manifest("v0002")
    old_coco = store.load("v0002")
    _drop_version(store, "v0002", "v0001")
    # the wait's deadline recorded by the old sensor is kept by a retry of the same series
    plan = steps.plan_wait(rnd, task_id="wait_for_labels", project_id=1, try_series=1,
                           timeout_s=86400.0)
    assert plan["deadline"] == "2026-12-02T09:43:27.181073+00:00"

    merged = steps.merge(rnd, corrections=str(rnd.paths.corrections), base_version="v0001")
    assert merged["version"] == "v0002" and merged["images_corrected"] == 50
    new = store.manifest("v0002")
    assert new["schema_version"] == 1
    assert {k: new["counts"][k] for k in ("images", "annotations", "splits")} == \
        {k: old["counts"][k] for k in ("images", "annotations", "splits")}
    new_coco = store.load("v0002")

    def boxes(coco):
        out = {}
        for a in coco["annotations"]:
            out.setdefault(a["image_id"], []).append(
                (a["category_id"], *(round(v) for v in a["bbox"])))
        return {k: sorted(v) for k, v in out.items()}

    assert boxes(new_coco) == boxes(old_coco)
    verified = [a for a in new_coco["annotations"] if "verified" in a]
    assert verified and all(a["source"] == "original" for a in verified)
    assert new["counts"]["merge"]["labels_confirmed"] == len(verified)
    assert [i["weight"] for i in new_coco["images"]] == [i["weight"] for i in old_coco["images"]]

    models = old_root / "models" / DAG_ID / rnd.paths.model().dir.name
    train = {**json.loads((models / "train_result.json").read_text()),
             "model_dir": str(models),
             "metrics": json.loads((models / "metrics.json").read_text())}
    gate = {"promoted": True, "checkpoint": "", "model_version": "", "metrics": {},
            "candidate": None, "current": None, "reason": ""}
    out = steps.report(rnd, base_version="v0001", train=train, gate=gate, merge=merged)
    report = json.loads(Path(out["report"]).read_text())
    assert report["schema_version"] == 1 and report["selected"] == 50
    assert report["fixed"] == {"missing": 32, "spurious": 29, "class_swap": 9, "bad_box": 0}
    assert Path(out["plot"]).stat().st_size > 0
    # a round from before the drift step: no drift section, no drift plot
    assert report["drift"] is None and not rnd.paths.drift_plot.exists()
    # an old evaluation has no histogram and its predictions file was not kept: no bars
    assert ModelPaths(models).metrics.is_file()


def test_a_file_from_a_newer_version_is_refused():
    assert check_schema({}, 1, "x") == 0
    assert check_schema({"schema_version": 1}, 1, "x") == 1
    with pytest.raises(SchemaError, match="newer than this airflow-hitl reads"):
        check_schema({"schema_version": 2}, 1, "manifest.json")
