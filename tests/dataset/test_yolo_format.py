"""YOLO-format folders imported as a dataset version (issue 15, point 3): the same
validation as a COCO import, and errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hitl_plugin.dataset.cli import main as dataset_cli
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.dataset.yolo_format import label_path, read_yolo
from hitl_plugin.exceptions import DatasetError

NAMES = ["cat", "dog", "bird"]


def make_yolo(folder: Path, labels: dict[str, str], *, names=NAMES, extra=None,
              sizes: dict[str, tuple[int, int]] | None = None, pool=("p1.png",)) -> Path:
    """A YOLO folder: ``labels`` maps ``<split>/<stem>`` to the label file's text (None: no
    label file); every key gets an image (``sizes`` or 100x50)."""
    sizes = sizes or {}
    for key, text in labels.items():
        split, stem = key.split("/")
        image = folder / "images" / split / f"{stem}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", sizes.get(key, (100, 50)), (40, 80, 120)).save(image)
        if text is not None:
            label = folder / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    for name in pool:
        image = folder / "images" / "pool" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(image)
    data = {"train": "images/train", "val": "images/val", "names": names, **(extra or {})}
    if pool:
        data["pool"] = "images/pool"
    (folder / "data.yaml").write_text(yaml.safe_dump(data))
    return folder


GOOD = {"train/a": "0 0.5 0.5 0.2 0.4\n2 0.25 0.25 0.1 0.1\n", "train/b": None,
        "val/c": "1 0.5 0.5 1.0 1.0\n"}


def test_a_yolo_folder_imports_as_a_version_with_splits_and_pool(tmp_path):
    src = make_yolo(tmp_path / "y", GOOD)
    store = DatasetStore(tmp_path / "root", "pets")
    assert store.import_source(src) == "v0001"
    coco = store.load()
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == NAMES
    by_name = {Path(i["file_name"]).name: i for i in coco["images"]}
    assert {n: i["hitl_split"] for n, i in by_name.items()} == {
        "a.png": "train", "b.png": "train", "p1.png": "pool"}
    assert by_name["a.png"]["file_name"] == "pets/images/train/a.png"
    assert (by_name["a.png"]["width"], by_name["a.png"]["height"]) == (100, 50)
    anns = [(a["category_id"], a["bbox"]) for a in coco["annotations"]
            if a["image_id"] == by_name["a.png"]["id"]]
    assert anns == [(1, [40.0, 15.0, 20.0, 20.0]), (3, [20.0, 10.0, 10.0, 5.0])]
    # no label file: no objects
    assert not [a for a in coco["annotations"] if a["image_id"] == by_name["b.png"]["id"]]
    val = json.loads(store.layout.val_file("pets").read_text())
    assert [a["bbox"] for a in val["annotations"]] == [[0.0, 0.0, 100.0, 50.0]]
    assert store.manifest("v0001")["counts"]["splits"] == {"train": 2, "pool": 1}
    assert store.layout.image_path(by_name["p1.png"]["file_name"]).is_file()


def test_names_as_a_dict_and_paths_under_the_path_key(tmp_path):
    src = tmp_path / "y"
    make_yolo(src / "data", GOOD, pool=())
    (src / "data" / "data.yaml").unlink()
    (src / "data.yaml").write_text(yaml.safe_dump({
        "path": "data", "train": "images/train", "val": ["images/val"],
        "names": {0: "cat", 1: "dog", 2: "bird"}, "nc": 3}))
    source = read_yolo(src / "data.yaml")
    assert source.names == NAMES and source.base == src / "data"
    assert source.splits["pool"] is None
    assert [i["file_name"] for i in source.splits["train"]["images"]] == [
        "images/train/a.png", "images/train/b.png"]


@pytest.mark.parametrize("names, message", [
    ({0: "cat", 2: "bird"}, r"a 2-class 'names' needs the indices 0\.\.1"),
    ([], r"'names' must be a non-empty list"),
    (["cat", "cat"], r"class names repeat"),
])
def test_bad_names_are_refused(tmp_path, names, message):
    src = make_yolo(tmp_path / "y", GOOD, names=names)
    with pytest.raises(DatasetError, match=message):
        read_yolo(src / "data.yaml")


def test_every_bad_line_is_named_with_its_file_and_line(tmp_path):
    src = make_yolo(tmp_path / "y", {
        "train/img3": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n",
        "train/img4": "\n0 0.5 0.5 0.2\n1 0.5 1.2 0.2 0.2\n1 x 0.5 0.2 0.2\n0 0.5 0.5 0 0.1\n",
        "train/img5": "1 0.1 0.1 0.5 0.1 0.5\n0 0.1 0.1 0.5 0.1 0.5 0.5 0.9\n",
        "val/v": "0 0.5 0.5 0.2 0.2 0.3\n1.5 0.5 0.5 0.2 0.2\n"})
    orphan = src / "labels" / "train" / "img9.txt"
    orphan.write_text("0 0.5 0.5 0.1 0.1\n")
    (src / "images" / "train" / "broken.png").write_bytes(b"not a png")
    store = DatasetStore(tmp_path / "root", "pets")
    with pytest.raises(DatasetError) as info:
        store.import_source(src)
    text = str(info.value)
    assert f"{src / 'data.yaml'}: 11 problem(s) in YOLO dataset" in text
    for line in [
        "labels/train/img3.txt:2: class 7 not in names (0..2)",
        "labels/train/img4.txt:2: expected 5 numbers (class cx cy w h), got 4",
        "labels/train/img4.txt:3: coordinates outside [0, 1]: 1.2",
        "labels/train/img4.txt:4: not a number: 'x'",
        "labels/train/img4.txt:5: the box has no area",
        "labels/train/img5.txt:1: expected 5 numbers (class cx cy w h), got 6",
        "labels/train/img5.txt:2: expected 5 numbers (a box) or a class and x y pairs "
        "(a polygon), got 8",
        "labels/val/v.txt:1: expected 5 numbers (class cx cy w h), got 6",
        "labels/val/v.txt:2: class 1.5 is not an integer",
        "labels/train/img9.txt: missing image for label (no image images/train/img9.*)",
        "images/train/broken.png: not a readable image (",
    ]:
        assert line in text, line
    assert store.latest() is None  # nothing published


def test_a_segment_line_becomes_the_box_of_its_polygon(tmp_path):
    src = make_yolo(tmp_path / "y", {"train/s": "1 0.1 0.2 0.5 0.2 0.3 0.8\n0 0.5 0.5 0.2 0.2\n"
                                                "0 0.5 0.5 0.2 0.2\n",
                                     "val/v": None})
    coco = read_yolo(src / "data.yaml").splits["train"]
    poly, box = coco["annotations"]  # the duplicate line is dropped
    assert poly["category_id"] == 2 and poly["bbox"] == [10.0, 10.0, 40.0, 30.0]
    assert poly["segmentation"] == [[10.0, 10.0, 50.0, 10.0, 30.0, 40.0]]
    assert poly["area"] == pytest.approx(600.0)
    assert "segmentation" not in box and box["area"] == 200.0


def test_the_converted_data_goes_through_the_coco_validation(tmp_path, monkeypatch):
    """A YOLO import is checked by the very validator of a COCO import."""
    from hitl_plugin.dataset import yolo_format

    seen = []
    monkeypatch.setattr(yolo_format, "validate_coco",
                        lambda coco, **kw: seen.append(kw["source"]))
    src = make_yolo(tmp_path / "y", GOOD)
    read_yolo(src / "data.yaml")
    assert [s.rsplit("(", 1)[1] for s in seen] == ["train, as COCO)", "val, as COCO)",
                                                    "pool, as COCO)"]


def test_label_path_follows_ultralytics():
    assert label_path(Path("/d/images/train/a.b.jpg")) == Path("/d/labels/train/a.b.txt")
    assert label_path(Path("/images/d/images/x.png")) == Path("/images/d/labels/x.txt")
    assert label_path(Path("/d/train/x.png")) == Path("/d/train/x.txt")


def test_cli_imports_a_yolo_folder_and_names_bad_lines(tmp_path, capsys):
    src = make_yolo(tmp_path / "y", {"train/a": "5 0.5 0.5 0.1 0.1\n", "val/v": None})
    root = str(tmp_path / "root")
    assert dataset_cli(["--root", root, "import", "pets", str(src)]) == 1
    assert "labels/train/a.txt:1: class 5 not in names (0..2)" in capsys.readouterr().err
    (src / "labels" / "train" / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    assert dataset_cli(["--root", root, "import", "pets", str(src)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["annotations"] == 1


def test_a_relative_folder_as_a_person_types_it(tmp_path, monkeypatch):
    """`hitl dataset import pets y` from the folder above: no `path` key, a relative folder."""
    make_yolo(tmp_path / "y", GOOD)
    monkeypatch.chdir(tmp_path)
    assert DatasetStore(tmp_path / "root", "pets").import_source("y") == "v0001"
    with_path = make_yolo(tmp_path / "z" / "data", GOOD)
    (tmp_path / "z" / "data.yaml").write_text(yaml.safe_dump(
        {**yaml.safe_load((with_path / "data.yaml").read_text()), "path": "data"}))
    monkeypatch.chdir(tmp_path / "z")
    assert read_yolo("data.yaml").splits["train"]["images"]
