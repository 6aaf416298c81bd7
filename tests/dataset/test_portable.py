"""``hitl dataset export`` (issue 15, point 5): a version written out as COCO or YOLO with its
provenance, which ``hitl dataset import`` reads back to the same labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hitl_plugin.dataset.cli import main as dataset_cli
from hitl_plugin.dataset.portable import export_version
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.exceptions import DatasetError
from tests.dataset.test_coco_features import CROWD, LICENSES, _round, coco_like


@pytest.fixture
def store(tmp_path, source):
    st = DatasetStore(tmp_path / "root", "coco")
    st.import_source(coco_like(source))
    _round(st, "r1", "v0001", [(1, [(2, [5.5, 6.25, 20, 10])]), (7, [(1, [3, 3, 30, 30])])])
    return st  # v0002: image 1 corrected, pool image 7 labeled


def _boxes(coco, *, crowd=True):
    """(file name, class name, bbox) of every annotation, independent of ids."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: Path(img["file_name"]).name for img in coco["images"]}
    return sorted((files[a["image_id"]], names[a["category_id"]], a["bbox"])
                  for a in coco["annotations"] if crowd or not a.get("iscrowd"))


def test_coco_export_imports_back_to_identical_annotations(store, tmp_path):
    out = tmp_path / "out"
    done = export_version(store, fmt="coco", out=out)  # default: LATEST
    assert done["version"] == "v0002" and done["images"] == "copied"
    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "pool.json", "train.json", "val.json"]
    again = DatasetStore(tmp_path / "root2", "again")
    again.import_source(out)
    original, back = store.load("v0002"), again.load()
    assert back["annotations"] == original["annotations"]  # crowd, segmentation, provenance
    assert back["licenses"] == LICENSES and back["categories"] == original["categories"]
    strip = len("coco/")
    assert [{**i, "file_name": i["file_name"][strip:]} for i in original["images"]] == [
        {**i, "file_name": i["file_name"][len("again/"):]} for i in back["images"]]
    val = json.loads(store.layout.val_file("coco").read_text())
    val_back = json.loads(again.layout.val_file("again").read_text())
    assert val_back["annotations"] == val["annotations"]
    image = out / "images" / "train" / "000001.png"
    stored = store.layout.image_path(original["images"][0]["file_name"])
    assert image.read_bytes() == stored.read_bytes()
    assert image.stat().st_ino != stored.stat().st_ino  # a copy, not a link to the store


def test_yolo_round_trip_gives_the_same_boxes_within_rounding(store, tmp_path):
    """COCO -> import -> export yolo -> import -> the same boxes (crowd regions left out)."""
    out = tmp_path / "yolo"
    done = export_version(store, "v0002", fmt="yolo", out=out, link=True)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"train": "images/train", "val": "images/val", "pool": "images/pool",
                    "nc": 2, "names": {0: "circle", 1: "square"}}
    assert done["crowd_excluded"] == 2  # one in train, one in val
    assert any("crowd" in note for note in done["left_out"])
    assert done["image_ids"]["images/train/000001.png"] == 1
    assert (out / "labels" / "train" / "000001.txt").is_file()
    assert not (out / "labels" / "pool").exists()  # the pool is unlabeled
    again = DatasetStore(tmp_path / "root2", "again")
    again.import_source(out)
    back, original = again.load(), store.load("v0002")
    assert len(back["images"]) == len(original["images"])
    got, want = _boxes(back), _boxes(original, crowd=False)
    assert [(f, c) for f, c, _ in got] == [(f, c) for f, c, _ in want]
    for (_, _, a), (_, _, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-3)
    splits = {Path(i["file_name"]).name: i["hitl_split"] for i in back["images"]}
    assert splits["000001.png"] == "train" and splits["000007.png"] == "train"
    assert splits["000008.png"] == "pool"
    val = json.loads(again.layout.val_file("again").read_text())
    assert len(val["annotations"]) == 2 and not any(a.get("iscrowd") for a in val["annotations"])


def test_provenance_names_the_version_its_parent_and_rounds(store, tmp_path):
    export_version(store, "v0002", fmt="coco", out=tmp_path / "out")
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    manifest = store.manifest("v0002")
    assert (prov["dataset"], prov["version"], prov["parent"]) == ("coco", "v0002", "v0001")
    assert prov["created"] == manifest["created"] and prov["round_key"] == "p|r1"
    assert prov["annotations_sha256"] == manifest["sha256"]
    assert [e["version"] for e in prov["lineage"]] == ["v0001", "v0002"]
    assert prov["source_rounds"] == ["p|r1"]
    assert prov["val"]["images"] == 2 and len(prov["val"]["sha256"]) == 64
    assert prov["format"] == "coco" and prov["exported_by"].startswith("airflow-hitl ")


def test_a_non_empty_out_is_refused_unless_forced(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(DatasetError, match=r"the folder is not empty; .* --force"):
        export_version(store, fmt="yolo", out=out)
    assert (out / "mine.txt").read_text() == "keep"
    export_version(store, "v0001", fmt="yolo", out=out, force=True)
    assert not (out / "mine.txt").exists() and (out / "data.yaml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers
    with pytest.raises(DatasetError, match="storage root"):
        export_version(store, fmt="coco", out=store.layout.images / "x", force=True)
    with pytest.raises(DatasetError, match="no version v0009"):
        export_version(store, "v0009", fmt="coco", out=tmp_path / "other")


def test_cli_exports_and_refuses_with_a_clear_error(store, tmp_path, capsys):
    root = str(store.layout.root)
    out = tmp_path / "cli"
    assert dataset_cli(["--root", root, "export", "coco", "--format", "yolo",
                        "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == "v0002" and "image_ids" not in printed
    assert dataset_cli(["--root", root, "export", "coco", "v0001", "--format", "coco",
                        "--out", str(out)]) == 1
    assert "the folder is not empty" in capsys.readouterr().err
    assert dataset_cli(["--root", root, "export", "coco", "v0001", "--format", "coco",
                        "--out", str(out), "--force"]) == 0
    train = json.loads((out / "annotations" / "train.json").read_text())
    assert CROWD["id"] in {a["id"] for a in train["annotations"]}
