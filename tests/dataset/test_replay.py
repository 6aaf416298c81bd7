"""Replaying a dataset's rounds without one annotator's or one round's answers (issue 13,
defect 15, second half): the other people's work since is kept, nothing is deleted."""

from __future__ import annotations

import json

import pytest

from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.replay import replay_without
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.exceptions import DatasetError
from hitl_plugin.paths import Layout
from hitl_plugin.schemas import Corrections, write_json_atomic


def _round(store, root, run, base, answers):
    """Merge one round as the pipeline does: its corrections recorded in its round folder."""
    corrections = Corrections(
        dag_id="p", run_id=run, dataset="d", version=base,
        items=[{"image_id": i, "status": "labeled", "task_id": i, "annotator": who,
                "time": "2026-01-01T00:00:00+00:00",
                "boxes": [{"bbox": [x, 1, 3, 3], "category_id": 1}]}
               for i, who, x in answers])
    paths = Layout.at(root).round("p", run)
    write_json_atomic(paths.corrections, corrections)
    return merge_corrections(store, base_version=base, corrections=corrections,
                             round_key=f"p|{run}", human_weight=3.0, decay=0.5,
                             report_path=paths.merge_report)["version"]


@pytest.fixture
def history(tmp_path):
    store = DatasetStore(tmp_path, "d")
    store.publish({"images": [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 20}
                              for i in (1, 2, 3)],
                   "annotations": [{"id": i, "image_id": i, "category_id": 1,
                                    "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}
                                   for i in (1, 2, 3)],
                   "categories": [{"id": 1, "name": "a"}]}, parent=None)
    v2 = _round(store, tmp_path, "r1", "v0001", [(1, "alice", 1), (2, "mallory", 9)])
    _round(store, tmp_path, "r2", v2, [(3, "alice", 2), (1, "mallory", 7)])
    return store, tmp_path


def _boxes(store, version):
    return {a["image_id"]: (a["bbox"][0], a.get("annotator")) for a in
            store.load(version)["annotations"]}


def test_replay_without_an_annotator_keeps_everyone_elses_work(history):
    store, _ = history
    assert _boxes(store, "v0003") == {1: (7, "mallory"), 2: (9, "mallory"), 3: (2, "alice")}
    latest = replay_without(store, start="v0001", annotator="mallory",
                            reason="mallory's boxes are random")
    # alice's answers of both rounds are back; mallory's are gone; image 2 is as it was
    assert _boxes(store, latest) == {1: (1, "alice"), 2: (0, None), 3: (2, "alice")}
    assert store.latest() == latest and store.versions()[:3] == ["v0001", "v0002", "v0003"]
    revert = store.manifest("v0004")
    assert revert["reverted_to"] == "v0001" and "mallory's boxes are random" in revert["reason"]
    assert revert["replay"]["left_out"] == [
        {"version": "v0002", "round": "p|r1", "annotator": "mallory", "answers": 1},
        {"version": "v0003", "round": "p|r2", "annotator": "mallory", "answers": 1}]


def test_replay_without_a_round(history):
    store, _ = history
    latest = replay_without(store, start="v0001", round_key="p|r1", reason="a wrong config")
    assert _boxes(store, latest) == {1: (7, "mallory"), 2: (0, None), 3: (2, "alice")}


def test_replay_refuses_what_it_cannot_replay_exactly(history):
    store, root = history
    with pytest.raises(DatasetError, match="needs a reason"):
        replay_without(store, start="v0001", annotator="x", reason="")
    with pytest.raises(DatasetError, match="exactly one of"):
        replay_without(store, start="v0001", reason="r")
    with pytest.raises(DatasetError, match="was not merged after"):
        replay_without(store, start="v0001", round_key="p|nope", reason="r")
    path = Layout.at(root).round("p", "r2").corrections
    data = json.loads(path.read_text())
    data["items"][0]["annotator"] = "someone else"  # edited after the merge
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="not the corrections v0003 was merged from"):
        replay_without(store, start="v0001", annotator="mallory", reason="r")
    assert store.versions() == ["v0001", "v0002", "v0003"]  # nothing published
