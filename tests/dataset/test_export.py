from __future__ import annotations

import json

import yaml

from hitl_plugin.dataset.export import export_yolo, yolo_line
from hitl_plugin.dataset.store import DatasetStore


def test_yolo_line_normalises_and_clips():
    assert yolo_line([10, 20, 30, 40], 100, 200, 1) == "1 0.250000 0.200000 0.300000 0.200000"
    assert yolo_line([-10, 0, 20, 10], 100, 100, 0) == "0 0.050000 0.050000 0.100000 0.100000"
    assert yolo_line([120, 0, 20, 10], 100, 100, 0) is None


def test_export_links_images_and_writes_labels_and_weights(tmp_path, source):
    store = DatasetStore(tmp_path / "root", "shapes")
    store.import_source(source)
    coco = store.load()
    coco["images"][0]["weight"] = 4.0
    val = json.loads(store.layout.val_file("shapes").read_text())
    data_yaml = export_yolo(store.layout.root, "shapes", "v0001", coco, val)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "circle", 1: "square"}
    train = data_yaml.parent / "train"
    listed = (train / "train.txt").read_text().split()
    assert len(listed) == 4  # pool images are not trained on
    first = train / "images" / "1.png"
    assert first.is_symlink() and first.resolve() == store.layout.image_path(
        coco["images"][0]["file_name"])
    # image 1 has category 2 -> class index 1
    assert (train / "labels" / "1.txt").read_text().startswith("1 ")
    weights = json.loads((data_yaml.parent / "weights.json").read_text())
    assert weights[0] == {"id": 1, "path": str(first), "weight": 4.0}
    assert len((data_yaml.parent / "val" / "val.txt").read_text().split()) == 2
