"""``hitl synth``: determinism, honest noise accounting, occlusion, valid COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hitl_dev.synth import KINDS, MAX_OCCLUSION, SHAPES, _render, generate, main
from hitl_plugin.boxes import iou
from hitl_plugin.dataset.coco import read_coco

FILES = ("train", "train_truth", "val", "pool", "pool_truth")


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """40 train images, 30 % noise with an uneven split (so a mix-up of kinds shows)."""
    out = tmp_path_factory.mktemp("synth") / "d"
    generate(out, train=40, val=8, pool=6, classes=4, imgsz=96, noise=0.3,
             noise_split="missing=0.4,spurious=0.1,class_swap=0.2,bad_box=0.3", seed=5)
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(train=6, val=3, pool=3, classes=3, imgsz=64, noise=0.3)
    generate(tmp_path / "a", seed=1, **kwargs)
    generate(tmp_path / "b", seed=1, **kwargs)
    generate(tmp_path / "c", seed=2, **kwargs)
    a, b, c = (_all_files(tmp_path / n) for n in "abc")
    assert len(a) == 12 + 5 + 1  # images, five COCO files, the noise report
    assert a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if a[name] != c[name]]
    assert any(name.endswith(".png") for name in differing)
    assert "annotations/train_truth.json" in differing


def test_layout_ids_and_coco_validity(noisy):
    import pycocotools.coco as pycocotools
    data = {name: read_coco(noisy / "annotations" / f"{name}.json") for name in FILES}
    ids = {name: [img["id"] for img in data[name]["images"]] for name in FILES}
    assert ids["train"] == list(range(1, 41))          # train first, then val, then pool
    assert ids["val"] == list(range(41, 49))
    assert ids["pool"] == list(range(49, 55))
    assert ids["train_truth"] == ids["train"] and ids["pool_truth"] == ids["pool"]
    assert data["pool"]["annotations"] == []
    assert data["pool_truth"]["annotations"]
    assert [c["name"] for c in data["train"]["categories"]] == list(SHAPES[:4])
    assert [c["id"] for c in data["train"]["categories"]] == [1, 2, 3, 4]
    for name in FILES:
        assert data[name]["categories"] == data["train"]["categories"]
        for img in data[name]["images"]:
            split = "train" if name.startswith("train") else name.split("_")[0]
            assert img["file_name"] == f"{split}/{img['id']:06d}.png"
            with Image.open(noisy / "images" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (96, 96)
        for ann in data[name]["annotations"]:
            assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            assert ann["iscrowd"] == 0 and ann["area"] > 0
        coco = pycocotools.COCO(str(noisy / "annotations" / f"{name}.json"))
        assert len(coco.getImgIds()) == len(data[name]["images"])
        assert len(coco.getAnnIds()) == len(data[name]["annotations"])
    truth_ids = [a["id"] for n in ("train_truth", "val", "pool_truth")
                 for a in data[n]["annotations"]]
    assert len(truth_ids) == len(set(truth_ids))  # annotation ids unique across files


def test_noise_matches_request_and_report_exactly(noisy):
    truth = {a["id"]: a for a in _load(noisy, "train_truth")["annotations"]}
    train = {a["id"]: a for a in _load(noisy, "train")["annotations"]}
    report = json.loads((noisy / "noise_report.json").read_text())

    # derive every error independently from the two label files
    measured = []
    for ident, ann in truth.items():
        if ident not in train:
            measured.append(("missing", ident, ann["image_id"]))
            continue
        got = train[ident]
        assert got["image_id"] == ann["image_id"]
        if got["category_id"] != ann["category_id"]:
            assert got["bbox"] == ann["bbox"]
            measured.append(("class_swap", ident, ann["image_id"]))
        elif got["bbox"] != ann["bbox"]:
            overlap = iou(got["bbox"], ann["bbox"])
            assert 0.2 - 1e-9 <= overlap <= 0.6 + 1e-9, overlap
            x, y, w, h = got["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
            measured.append(("bad_box", ident, ann["image_id"]))
        else:
            assert got == ann  # untouched labels are identical
    for ident in sorted(set(train) - set(truth)):
        assert ident > max(truth)
        box = train[ident]["bbox"]
        image_id = train[ident]["image_id"]
        same_image = [a["bbox"] for a in truth.values() if a["image_id"] == image_id]
        assert all(iou(box, b) <= 0.1 for b in same_image)
        measured.append(("spurious", ident, train[ident]["image_id"]))

    reported = [(e["kind"], e["annotation_id"], e["image_id"]) for e in report["errors"]]
    assert sorted(measured, key=lambda m: m[1]) == reported

    n = len(truth)
    assert report["truth_boxes"] == n
    counts = {k: sum(m[0] == k for m in measured) for k in KINDS}
    assert report["realised"]["counts"] == counts
    assert sum(counts.values()) == round(0.3 * n)  # total exactly as requested (rounded)
    split = {"missing": 0.4, "spurious": 0.1, "class_swap": 0.2, "bad_box": 0.3}
    for kind, share in split.items():
        assert abs(counts[kind] - share * 0.3 * n) <= 1, (kind, counts, n)
        assert report["realised"]["rates"][kind] == pytest.approx(counts[kind] / n)
    assert report["requested"]["noise"] == 0.3


def test_truth_boxes_tight_and_at_most_a_third_occluded():
    """Re-render images and check every truth box against the generator's own masks."""
    checked = 0
    worst = 0.0
    for image_id in range(1, 61):
        rng = np.random.default_rng([123, image_id])
        pixels, objects, owner = _render(rng, 96, 6)
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8
        for index, obj in enumerate(objects):
            visible = owner == index
            assert obj["visible"] == int(visible.sum())
            hidden = 1 - obj["visible"] / obj["full"]
            worst = max(worst, hidden)
            assert hidden <= MAX_OCCLUSION + 1e-9
            rows, cols = np.nonzero(visible)
            x, y, w, h = obj["bbox"]
            assert (x, y) == (cols.min(), rows.min())
            assert (x + w, y + h) == (cols.max() + 1, rows.max() + 1)
            checked += 1
    assert checked > 100
    assert worst > 0.05  # shapes do overlap: the check above is not vacuous


def test_rendered_pixels_match_the_written_truth(tmp_path):
    """The written images and boxes come from the same render (same seed and id)."""
    generate(tmp_path, train=3, val=0, pool=0, classes=3, imgsz=64, noise=0.0, seed=9)
    truth = _load(tmp_path, "train_truth")
    for img in truth["images"]:
        pixels, objects, _ = _render(np.random.default_rng([9, img["id"]]), 64, 3)
        with Image.open(tmp_path / "images" / img["file_name"]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), pixels)
        boxes = [a["bbox"] for a in truth["annotations"] if a["image_id"] == img["id"]]
        assert boxes == [o["bbox"] for o in objects]
    assert _load(tmp_path, "train") == truth  # no noise asked, none injected


def test_cli_writes_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--pool", "1",
                 "--imgsz", "48", "--classes", "2", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"train": 2, "val": 1, "pool": 1}
    assert summary["classes"] == ["circle", "square"]
    for bad in (["--classes", "9"], ["--noise", "1.5"], ["--noise-split", "typo=1"]):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "e"), *bad])
        assert exc.value.code == 2


# -- the long tail and systematic errors (the rounds benchmark's scenarios) -----------------

TAIL = {"small": 0.15, "occluded": 0.15, "background": 0.15}


@pytest.fixture(scope="module")
def tailed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tail"
    generate(out, train=120, val=40, pool=140, classes=5, imgsz=96, noise=0.0, seed=11,
             class_mix=[0.38, 0.25, 0.17, 0.14, 0.065], tail=TAIL)
    return out


def test_class_mix_makes_a_rare_class_in_every_split(tailed):
    counts = {}
    for name in ("train_truth", "val", "pool_truth"):
        for ann in _load(tailed, name)["annotations"]:
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    total = sum(counts.values())
    assert 0.025 < counts[5] / total < 0.08  # hexagon, about 5 % of objects
    assert counts[1] > 2.5 * counts[5] and counts[1] > counts[2] > counts[3]  # imbalance
    assert all(any(a["category_id"] == 5 for a in _load(tailed, n)["annotations"])
               for n in ("train_truth", "pool_truth"))


def test_rare_conditions_are_recorded_and_look_as_named(tailed):
    info = json.loads((tailed / "conditions.json").read_text())
    assert info["tail"] == TAIL
    conditions = {int(k): v for k, v in info["images"].items()}
    n_images = 300
    for name in ("small", "occluded", "background"):
        share = sum(v == name for v in conditions.values()) / n_images
        assert 0.07 < share < 0.25, (name, share)
    boxes: dict[int, list[dict]] = {}
    for name in ("train_truth", "val", "pool_truth"):
        for ann in _load(tailed, name)["annotations"]:
            boxes.setdefault(ann["image_id"], []).append(ann)
    small = [max(a["bbox"][2:]) for i, c in conditions.items() if c == "small"
             for a in boxes.get(i, [])]
    plain = [max(a["bbox"][2:]) for i in range(1, n_images + 1) if i not in conditions
             for a in boxes.get(i, [])]
    assert max(small) <= 0.12 * 96 + 2 and np.median(small) <= 0.6 * np.median(plain)
    per_image = lambda cond: np.mean([len(boxes.get(i, [])) for i, c in conditions.items()  # noqa: E731
                                      if c == cond])
    assert per_image("occluded") > np.mean([len(boxes.get(i, [])) for i in range(1, 301)
                                            if i not in conditions])
    # the unusual background is a checkerboard: far more contrast between neighbours
    def busy(image_id: int) -> float:
        split = "train" if image_id <= 120 else "val" if image_id <= 160 else "pool"
        px = np.asarray(Image.open(tailed / "images" / split / f"{image_id:06d}.png"), float)
        return float(np.abs(np.diff(px, axis=1)).mean())
    bg = [busy(i) for i, c in conditions.items() if c == "background"][:10]
    other = [busy(i) for i in range(1, 40) if i not in conditions][:10]
    assert np.median(bg) > 1.5 * np.median(other)


def test_no_tail_no_mix_gives_the_same_bytes_as_before(tmp_path):
    """The defaults draw exactly what earlier versions drew (fixtures and demos depend on it)."""
    kwargs = dict(train=5, val=2, pool=2, classes=3, imgsz=64, noise=0.2, seed=4)
    generate(tmp_path / "a", **kwargs)
    generate(tmp_path / "b", class_mix=None, tail=None, systematic=None, **kwargs)
    assert _all_files(tmp_path / "a") == _all_files(tmp_path / "b")
    assert not (tmp_path / "a" / "conditions.json").exists()


SYSTEMATIC = {"confusion": {"from": "triangle", "to": "star", "rate": 0.5},
              "vendor": {"share": 0.3, "offset": [0.2, 0.15]}}


@pytest.fixture(scope="module")
def vendor(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "vendor"
    generate(out, train=80, val=4, pool=0, classes=4, imgsz=96, noise=0.05, seed=12,
             systematic=SYSTEMATIC)
    return out


def test_systematic_errors_are_consistent_and_listed(vendor):
    report = json.loads((vendor / "noise_report.json").read_text())
    truth = {a["id"]: a for a in _load(vendor, "train_truth")["annotations"]}
    noisy = {a["id"]: a for a in _load(vendor, "train")["annotations"]}
    confusion = [e for e in report["errors"] if e.get("systematic") == "confusion"]
    shifted = [e for e in report["errors"] if e.get("systematic") == "vendor"]
    assert report["systematic"] == {"confusion": len(confusion), "vendor": len(shifted)}
    triangles = [a for a in truth.values() if a["category_id"] == 3]
    assert 0.3 < len(confusion) / len(triangles) < 0.7
    for e in confusion:  # always the same two classes
        assert (e["kind"], e["truth_category_id"], e["category_id"]) == ("class_swap", 3, 4)
        assert noisy[e["annotation_id"]]["category_id"] == 4
    vendor_images = {e["image_id"] for e in shifted}
    assert 0.15 < len(vendor_images) / 80 < 0.45
    for e in shifted:  # the vendor's one habit: every box moved by the same share of its size
        x, y, w, h = truth[e["annotation_id"]]["bbox"]
        nx, ny, nw, nh = noisy[e["annotation_id"]]["bbox"]
        assert (nw, nh) == (w, h) and e["kind"] == "bad_box"
        inside_x = 0 < x + 0.2 * w < 96 - w
        inside_y = 0 < y + 0.15 * h < 96 - h
        if inside_x:
            assert abs(nx - (x + 0.2 * w)) <= 0.5
        if inside_y:
            assert abs(ny - (y + 0.15 * h)) <= 0.5
        assert iou([nx, ny, nw, nh], [x, y, w, h]) == pytest.approx(e["iou"], abs=1e-3)
    # the random noise goes to boxes the systematic errors left alone, and is listed too
    systematic_ids = {e["annotation_id"] for e in confusion + shifted}
    random_errors = [e for e in report["errors"] if "systematic" not in e]
    assert random_errors and not {e["annotation_id"] for e in random_errors
                                  if e["kind"] != "spurious"} & systematic_ids
    # every difference between the files is a listed error: the truth is known
    listed = {e["annotation_id"] for e in report["errors"]}
    for ann_id, ann in truth.items():
        if ann_id not in listed:
            assert noisy[ann_id] == ann


def test_truth_does_not_depend_on_the_errors(vendor, tmp_path):
    generate(tmp_path, train=80, val=4, pool=0, classes=4, imgsz=96, noise=0.0, seed=12)
    assert _load(tmp_path, "train_truth") == _load(vendor, "train_truth")


@pytest.mark.parametrize("bad, match", [
    ({"class_mix": [1, 2]}, "2 weights for 3 classes"),
    ({"class_mix": [1, -1, 1]}, "class_mix weights"),
    ({"tail": {"foggy": 0.1}}, "unknown tail condition"),
    ({"tail": {"small": 0.7, "occluded": 0.5}}, "sum to at most 1"),
    ({"systematic": {"confusion": {"from": "circle", "to": "circle", "rate": 0.5}}},
     "two different classes"),
    ({"systematic": {"vendor": {"share": 0.3}}}, "offset"),
    ({"systematic": {"typo": {}}}, "unknown systematic"),
])
def test_bad_tail_or_systematic_settings_name_the_field(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, train=2, val=1, pool=0, classes=3, imgsz=64, **bad)
