"""COCO-derived data as COCO users expect (issue 15, point 4): crowd annotations stay in the
dataset and out of training, ``licenses`` and image fields live through every version, and a
box a person moves loses its stale ``segmentation``."""

from __future__ import annotations

import json

import pytest

from hitl_plugin.dataset.export import export_yolo
from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.portable import export_version
from hitl_plugin.dataset.replay import replay_without
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.schemas import Corrections, write_json_atomic

LICENSES = [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/x"},
            {"id": 4, "name": "Attribution-NonCommercial", "url": "http://cc.org/y"}]
#: the crowd region of image 1 (an RLE mask, as COCO writes crowds)
CROWD = {"id": 100, "image_id": 1, "category_id": 1, "bbox": [30.0, 20.0, 30.0, 25.0],
         "area": 700.0, "iscrowd": 1, "segmentation": {"counts": [1500, 700, 872],
                                                        "size": [48, 64]}}
POLYGON = [[4.0, 6.0, 24.0, 6.0, 24.0, 16.0, 4.0, 16.0]]


def coco_like(folder):
    """Give the test source (``conftest.make_source``) the features of real COCO files."""
    for split in ("train", "val", "pool"):
        path = folder / "annotations" / f"{split}.json"
        data = json.loads(path.read_text())
        data["licenses"] = LICENSES
        data["info"] = {"description": "COCO-like", "year": 2017}
        for img in data["images"]:
            img.update(license=4, coco_url=f"http://images.cocodataset.org/{img['id']}.jpg",
                       flickr_url=f"http://farm.flickr.com/{img['id']}.jpg",
                       date_captured="2013-11-14 11:18:45")
        for ann in data["annotations"]:
            ann["segmentation"] = POLYGON
        if split == "train":
            data["annotations"].append(CROWD)
        if split == "val":
            data["annotations"].append({**CROWD, "id": 101, "image_id": 5})
        path.write_text(json.dumps(data))
    return folder


@pytest.fixture
def store(tmp_path, source):
    st = DatasetStore(tmp_path / "root", "coco")
    st.import_source(coco_like(source))
    return st


def _round(store, run, base, items, annotator="alice"):
    """Merge one round as the pipeline does (its corrections recorded for a replay)."""
    corrections = Corrections(
        dag_id="p", run_id=run, dataset=store.name, version=base,
        items=[{"image_id": i, "status": "labeled", "task_id": i, "annotator": annotator,
                "time": "2026-01-01T00:00:00+00:00",
                "boxes": [{"bbox": b, "category_id": c} for c, b in boxes]}
               for i, boxes in items])
    paths = store.layout.round("p", run)
    write_json_atomic(paths.corrections, corrections)
    return merge_corrections(store, base_version=base, corrections=corrections,
                             round_key=f"p|{run}", human_weight=3.0, decay=0.5,
                             report_path=paths.merge_report)


def _anns(coco, image_id):
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def _image_fields(coco):
    return {img["id"]: (img["license"], img["coco_url"], img["flickr_url"],
                        img["date_captured"]) for img in coco["images"]}


def test_licenses_and_image_fields_live_through_import_merge_replay_and_export(store, tmp_path):
    v1 = store.load("v0001")
    assert v1["licenses"] == LICENSES and v1["info"]["year"] == 2017
    fields = _image_fields(v1)
    assert len(fields) == 6 and fields[1][0] == 4
    val = json.loads(store.layout.val_file("coco").read_text())
    assert val["licenses"] == LICENSES and val["images"][0]["license"] == 4
    v2 = _round(store, "r1", "v0001", [(1, [(2, [5, 6, 20, 10])])])["version"]
    v3 = _round(store, "r2", v2, [(2, [(1, [8, 8, 10, 10])])], annotator="mallory")["version"]
    latest = replay_without(store, start="v0001", annotator="mallory", reason="test")
    for version in (v2, v3, latest):
        coco = store.load(version)
        assert coco["licenses"] == LICENSES, version
        assert _image_fields(coco) == fields, version
    export_version(store, fmt="coco", out=tmp_path / "out")
    train = json.loads((tmp_path / "out" / "annotations" / "train.json").read_text())
    assert train["licenses"] == LICENSES
    assert {i: f for i, f in _image_fields(train).items()} == {
        i: f for i, f in fields.items() if i in {img["id"] for img in train["images"]}}


def test_crowd_annotations_stay_in_the_dataset_and_out_of_the_training_labels(store):
    coco = store.load()
    assert CROWD["id"] in {a["id"] for a in coco["annotations"]}
    val = json.loads(store.layout.val_file("coco").read_text())
    data_yaml = export_yolo(store.layout.root, "coco", "v0001", coco, val)
    lines = (data_yaml.parent / "train" / "labels" / "1.txt").read_text().split("\n")
    assert [line for line in lines if line] == ["1 0.218750 0.229167 0.312500 0.208333"]
    val_lines = (data_yaml.parent / "val" / "labels" / "5.txt").read_text().split()
    assert len(val_lines) == 5  # one box: the crowd region is not a box to learn
    done = json.loads((data_yaml.parent / ".complete.json").read_text())
    assert done["labels"] == "no-crowd"


def test_an_export_written_before_crowds_were_left_out_is_written_again(store):
    coco = store.load()
    val = json.loads(store.layout.val_file("coco").read_text())
    data_yaml = export_yolo(store.layout.root, "coco", "v0001", coco, val)
    label = data_yaml.parent / "train" / "labels" / "1.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n0 0.7 0.6 0.4 0.5\n")  # as the old export wrote it
    (data_yaml.parent / ".complete.json").write_text(json.dumps({"dataset": "coco",
                                                                 "version": "v0001"}))
    export_yolo(store.layout.root, "coco", "v0001", coco, val)
    assert len(label.read_text().split("\n")) == 2  # one line and the final newline


def test_a_correction_never_drops_or_changes_a_crowd_annotation(store):
    out = _round(store, "r1", "v0001", [(1, [(2, [5, 6, 20, 10]), (1, [40, 30, 5, 5])])])
    coco = store.load(out["version"])
    crowd = [a for a in _anns(coco, 1) if a.get("iscrowd")]
    assert crowd == [{**CROWD, "source": "original"}]  # verbatim
    (record,) = coco["hitl_history"]
    assert CROWD["id"] not in [a["id"] for a in record["replaced"]]
    assert record["changes"]["spurious"] == 0  # the crowd was never compared with the answer
    manifest = store.manifest(out["version"])
    assert manifest["counts"]["annotations"] == len(coco["annotations"])
    assert manifest["counts"]["merge"]["crowd_kept"] == 1


def test_a_moved_box_loses_its_segmentation_an_unchanged_or_relabeled_one_keeps_it(store):
    before = store.load("v0001")
    (kept,) = _anns(before, 2)
    (relabeled,) = _anns(before, 3)
    out = _round(store, "r1", "v0001", [
        (1, [(1, [10, 12, 20, 10])]),  # moved by 6 px
        (2, [(kept["category_id"], [4.4, 6.3, 20.0, 10.0])]),  # within rounding: unchanged
        (3, [(3 - relabeled["category_id"], [4.0, 6.0, 20.0, 10.0])]),  # the class only
    ])
    coco = store.load(out["version"])
    (moved,) = [a for a in _anns(coco, 1) if not a.get("iscrowd")]
    assert "segmentation" not in moved and moved["area"] == 200.0
    assert moved["bbox"] == [10.0, 12.0, 20.0, 10.0] and moved["source"] == "human"
    replaced = {r["image_id"]: r["replaced"] for r in coco["hitl_history"]}
    assert replaced[1][0]["segmentation"] == POLYGON  # the old outline is kept in history
    (same,) = _anns(coco, 2)
    assert same["id"] == kept["id"] and same["segmentation"] == POLYGON
    assert same["bbox"] == kept["bbox"] and "verified" in same
    (swapped,) = _anns(coco, 3)
    assert swapped["category_id"] != relabeled["category_id"] and swapped["source"] == "human"
    assert swapped["segmentation"] == POLYGON and swapped["bbox"] == relabeled["bbox"]
