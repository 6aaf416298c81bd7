from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hitl_plugin.dataset.store import DatasetStore, iter_coco_lines
from hitl_plugin.exceptions import CocoError, DatasetError


@pytest.fixture
def store(tmp_path, source):
    st = DatasetStore(tmp_path / "root", "shapes")
    st.import_source(source)
    return st


def _bump(coco):
    coco = json.loads(json.dumps(coco))
    coco["annotations"][0]["bbox"] = [5.0, 5.0, 10.0, 10.0]
    coco["annotations"][0]["source"] = "human"
    return coco


def test_import_creates_v0001_with_shared_images(store, tmp_path):
    assert store.latest() == "v0001"
    coco = store.load()
    assert [i["hitl_split"] for i in coco["images"]] == ["train"] * 4 + ["pool"] * 2
    assert all(i["file_name"].startswith("shapes/") for i in coco["images"])
    assert all(store.layout.image_path(i["file_name"]).is_file() for i in coco["images"])
    assert {a["source"] for a in coco["annotations"]} == {"original"}
    manifest = store.manifest("v0001")
    assert manifest["parent"] is None and manifest["counts"]["splits"] == {"train": 4, "pool": 2}
    val = json.loads(store.layout.val_file("shapes").read_text())
    assert len(val["images"]) == 2 and "hitl_split" not in val["images"][0]


def test_publish_is_a_new_immutable_version(store):
    v2 = store.publish(_bump(store.load()), parent="v0001", round=1)
    assert (v2, store.latest()) == ("v0002", "v0002")
    assert store.load("v0001")["annotations"][0]["bbox"] == [4.0, 6.0, 20.0, 10.0]
    assert store.load("v0002")["annotations"][0]["bbox"] == [5.0, 5.0, 10.0, 10.0]
    # images are not copied per version
    assert not list(store.version_dir(v2).glob("*.png"))


def test_tampered_version_is_refused(store):
    path = store.annotations_path("v0001")
    os.chmod(path, 0o644)
    path.write_text(path.read_text().replace("circle", "circl3"))
    with pytest.raises(DatasetError, match="sha256 does not match"):
        store.load("v0001")


def test_crash_before_latest_leaves_previous_version(store):
    def crash(version):
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        store.publish(_bump(store.load()), parent="v0001", _before_latest=crash)
    assert store.latest() == "v0001"
    assert store.load()["annotations"][0]["bbox"] == [4.0, 6.0, 20.0, 10.0]


def test_crash_while_writing_leaves_nothing_half_written(store):
    def writer(out):
        out.write('{"images": [')
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish(parent="v0001", writer=writer)
    assert store.versions() == ["v0001"] and store.latest() == "v0001"
    assert not list(store.dir.glob(".tmp-*"))


def test_kill_9_mid_publish_keeps_latest_readable(store, tmp_path):
    """A real process killed between the rename and LATEST: a reader still gets v0001."""
    script = f"""
import json, os, signal
from hitl_plugin.dataset.store import DatasetStore
st = DatasetStore({str(store.layout.root)!r}, "shapes")
coco = st.load()
st.publish(coco, parent="v0001", _before_latest=lambda v: os.kill(os.getpid(), signal.SIGKILL))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert store.latest() == "v0001"
    store.load()
    # the orphan folder is complete and verifiable, but not LATEST; the next publish goes past it
    assert store.versions() == ["v0001", "v0002"]
    store.verify("v0002")
    assert store.publish(store.load(), parent="v0001") == "v0003"


def test_round_key_makes_publish_idempotent(store):
    a = store.publish(_bump(store.load()), parent="v0001", round_key="dag|run1")
    b = store.publish(_bump(store.load("v0001")), parent="v0001", round_key="dag|run1")
    assert a == b == "v0002" and store.versions() == ["v0001", "v0002"]


def test_invalid_coco_is_not_published(store):
    coco = store.load()
    coco["annotations"][0]["category_id"] = 42
    with pytest.raises(CocoError, match="category_id 42 does not exist"):
        store.publish(coco, parent="v0001")
    assert store.versions() == ["v0001"]


def test_second_import_is_refused(store, source):
    with pytest.raises(DatasetError, match="already exists"):
        store.import_source(source)


def test_files_stay_plain_coco(store):
    from pycocotools.coco import COCO

    coco = COCO(str(store.annotations_path("v0001")))
    assert len(coco.getAnnIds()) == 4 and len(coco.getImgIds()) == 6
    items = list(iter_coco_lines(store.annotations_path("v0001")))
    kinds = [k for k, _ in items]
    assert kinds.count("images") == 6 and kinds.count("annotations") == 4
    assert json.loads(dict(items)["head:categories"])[0]["name"] == "circle"
    assert [json.loads(v) for k, v in items if k == "annotations"] == store.load()["annotations"]


def test_a_stray_folder_is_skipped_and_a_corrupt_manifest_named(tmp_path):
    """Issue 13, defect 9: a stray vNNNN folder without a manifest, or one corrupt old
    manifest, blocked every later merge with an exception that was not a DatasetError."""
    from hitl_plugin.dataset.merge import merge_corrections
    from hitl_plugin.schemas import Corrections

    store = DatasetStore(tmp_path, "d")
    store.publish({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                   "annotations": [], "categories": [{"id": 1, "name": "a"}]}, parent=None)
    (store.dir / "v0002").mkdir()  # left by hand: no manifest
    assert store.versions() == ["v0001"] and store.next_version() == "v0003"
    corrections = Corrections(dag_id="x", run_id="r", dataset="d", version="v0001",
                              items=[{"image_id": 1, "status": "labeled", "task_id": 1,
                                      "boxes": [{"bbox": [1, 1, 2, 2], "category_id": 1}]}])
    out = merge_corrections(store, base_version="v0001", corrections=corrections,
                            round_key="x|r", human_weight=2.0, decay=0.5,
                            report_path=tmp_path / "report.json")
    assert out["version"] == "v0003" and store.latest() == "v0003"
    manifest = store.version_dir("v0001") / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("{ not json")
    with pytest.raises(DatasetError, match=r"v0001/manifest.json: the manifest is corrupt"):
        merge_corrections(store, base_version="v0003", corrections=corrections.model_copy(
            update={"version": "v0003", "run_id": "r2"}), round_key="x|r2", human_weight=2.0,
            decay=0.5, report_path=tmp_path / "report2.json")


def test_import_checks_real_image_sizes_and_refuses_links_out(tmp_path):
    """Issue 13, defect 8: a 64x48 file declared 6400x4800 imported (every box then scaled
    wrongly), and import followed symlinks out of the source folder."""
    import json

    from PIL import Image

    from hitl_dev.synth import generate

    src = tmp_path / "src"
    generate(src, train=4, val=2, pool=0, classes=2, imgsz=64, noise=0.0, seed=2)
    train = json.loads((src / "annotations" / "train.json").read_text())
    train["images"][0]["width"], train["images"][0]["height"] = 6400, 4800
    outside = tmp_path / "secret.png"
    Image.new("RGB", (64, 64)).save(outside)
    linked = src / "images" / train["images"][1]["file_name"]
    linked.unlink()
    linked.symlink_to(outside)
    (src / "annotations" / "train.json").write_text(json.dumps(train))
    store = DatasetStore(tmp_path / "root", "d")
    with pytest.raises(DatasetError) as info:
        store.import_source(src)
    text = str(info.value)
    assert "2 image(s) refused" in text
    assert f"{train['images'][0]['file_name']}: is 64x64 px, but image id" in text
    assert "declared 6400x4800" in text
    assert f"{train['images'][1]['file_name']}: leaves the source folder" in text
    assert store.latest() is None


def test_revert_publishes_an_earlier_version_again_and_deletes_nothing(tmp_path):
    """Issue 13, defect 15: a bad round could not be taken back."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from hitl_plugin.dataset.merge import merge_corrections
    from hitl_plugin.schemas import Corrections

    store = DatasetStore(tmp_path, "d")
    store.publish({"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                    "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}],
                   "categories": [{"id": 1, "name": "a"}]}, parent=None)
    bad = Corrections(dag_id="x", run_id="careless", dataset="d", version="v0001",
                      items=[{"image_id": 1, "status": "labeled", "task_id": 1, "boxes": []}])
    merge_corrections(store, base_version="v0001", corrections=bad, round_key="x|careless",
                      human_weight=2.0, decay=0.5, report_path=tmp_path / "r.json")
    assert store.load()["annotations"] == []
    hitl = str(Path(sys.executable).with_name("hitl"))
    out = subprocess.run([hitl, "dataset", "--root", str(tmp_path), "revert", "d", "v0001",
                          "--reason", "a careless annotator emptied image 1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert (manifest["version"], manifest["parent"], manifest["reverted_to"]) == \
        ("v0003", "v0002", "v0001")
    assert manifest["reverted_rounds"] == ["x|careless"]
    assert manifest["reason"] == "a careless annotator emptied image 1"
    assert store.latest() == "v0003" and store.versions() == ["v0001", "v0002", "v0003"]
    assert store.load("v0003") == store.load("v0001")
    with pytest.raises(DatasetError, match="needs a reason"):
        store.revert("v0001", reason=" ")
    with pytest.raises(DatasetError, match="already LATEST"):
        store.revert("v0003", reason="again")
