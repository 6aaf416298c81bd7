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


# -- drift: the pool and val_drifted drawn in a drifted world -------------------------------

ALL_DRIFT = ["background", "colour", "scale", "class_mix"]
DRIFT_BASE = dict(train=3, val=3, pool=12, classes=4, imgsz=64, noise=0.2, seed=21)


def _pixels(root: Path, file_name: str) -> np.ndarray:
    with Image.open(root / "images" / file_name) as im:
        return np.asarray(im.convert("RGB"), dtype=float)


def _boxes_by_image(root: Path, name: str) -> dict[int, list[dict]]:
    data = _load(root, name)
    out: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        out[ann["image_id"]].append(ann)
    return out


def _outside_boxes(root: Path, img: dict, anns: list[dict]) -> np.ndarray:
    """Pixels outside every truth box (background only), as rows of RGB."""
    px = _pixels(root, img["file_name"])
    keep = np.ones(px.shape[:2], bool)
    for ann in anns:
        x, y, w, h = (int(v) for v in ann["bbox"])
        keep[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = False
    return px[keep]


@pytest.fixture(scope="module")
def plain_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "plain"
    generate(out, **DRIFT_BASE)
    return out


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "drifted"
    summary = generate(out, drift={"kinds": ALL_DRIFT}, drift_val=5, **DRIFT_BASE)
    return out, summary


def test_drift_none_gives_the_same_bytes_and_drift_leaves_train_and_val_alone(
        tmp_path, plain_world, drifted):
    generate(tmp_path / "none", drift=None, drift_val=None, **DRIFT_BASE)
    plain = _all_files(plain_world)
    assert _all_files(tmp_path / "none") == plain
    assert not any(n.startswith(("images/val_drifted", "drift_report")) for n in plain)
    # the world the model knew is drawn exactly as without drift
    root, _ = drifted
    changed = _all_files(root)
    for name, data in plain.items():
        if not name.startswith("images/pool/") and name not in (
                "annotations/pool.json", "annotations/pool_truth.json"):
            assert changed[name] == data, name
    assert _load(root, "pool")["images"] == _load(plain_world, "pool")["images"]


def test_val_drifted_is_a_clean_held_out_split_with_unique_ids(drifted, tmp_path):
    root, summary = drifted
    val_drifted = read_coco(root / "annotations" / "val_drifted.json")
    assert [img["id"] for img in val_drifted["images"]] == list(range(19, 24))  # after pool
    for img in val_drifted["images"]:
        assert img["file_name"] == f"val_drifted/{img['id']:06d}.png"
        assert (root / "images" / img["file_name"]).is_file()
    assert val_drifted["annotations"] and val_drifted["categories"] == _load(root, "val")[
        "categories"]
    ann_ids = [a["id"] for n in ("train_truth", "val", "pool_truth", "val_drifted")
               for a in _load(root, n)["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    image_ids = [img["id"] for n in ("train", "val", "pool", "val_drifted")
                 for img in _load(root, n)["images"]]
    assert image_ids == list(range(1, 24))
    # no errors are injected outside train
    assert {e["image_id"] for e in json.loads((root / "noise_report.json").read_text())[
        "errors"]} <= set(range(1, 4))
    report = json.loads((root / "drift_report.json").read_text())
    assert report["spec"] == {"kinds": ALL_DRIFT, "share": 1.0,
                              "class_mix": [0.1, 0.1, 0.1, 0.7], "scale": [0.05, 0.12]}
    assert report["share"] == 1.0
    assert report["images"] == {str(i): ALL_DRIFT for i in range(7, 24)}
    assert report["counts"] == {"pool": 12, "val_drifted": 5}
    assert summary["images"] == {"train": 3, "val": 3, "pool": 12, "val_drifted": 5}
    assert summary["drift"] == {"kinds": ALL_DRIFT, "share": 1.0, "pool_drifted": 12,
                                "val_drifted": 5}
    assert summary["annotations"]["val_drifted"] == len(val_drifted["annotations"])
    # the truth of the pool is still there, and the same arguments give the same bytes
    pool_truth = _load(root, "pool_truth")
    assert pool_truth["annotations"] and {a["image_id"] for a in pool_truth["annotations"]} <= \
        set(range(7, 19))
    generate(tmp_path / "again", drift={"kinds": ALL_DRIFT}, drift_val=5, **DRIFT_BASE)
    assert _all_files(tmp_path / "again") == _all_files(root)
    # drift_val defaults to val
    s = generate(tmp_path / "dv", train=0, val=2, pool=1, classes=2, imgsz=64,
                 drift={"kinds": ["colour"]})
    assert s["images"]["val_drifted"] == 2


def test_background_drift_changes_the_background_statistics(tmp_path, plain_world):
    generate(tmp_path, drift={"kinds": ["background"]}, drift_val=0, **DRIFT_BASE)
    stats = {}
    for label, root in (("plain", plain_world), ("drift", tmp_path)):
        boxes = _boxes_by_image(root, "pool_truth")
        means, grain = [], []
        for img in _load(root, "pool")["images"]:
            bg = _outside_boxes(root, img, boxes[img["id"]])
            means.append(bg.mean())
            px = _pixels(root, img["file_name"])
            grain.append(np.abs(np.diff(px, axis=1)).mean())
        stats[label] = (np.median(means), np.median(grain), np.std(means))
    assert stats["drift"][0] < 0.6 * stats["plain"][0]      # dark
    assert stats["drift"][1] > 1.2 * stats["plain"][1]      # grainy
    assert stats["drift"][2] < stats["plain"][2]            # one family, not any colour
    # the shapes still stand out: each one's mean colour is far from the background's
    contrast = {}
    for label, look in (("plain", frozenset()), ("drift", frozenset({"background"}))):
        contrast[label] = []
        for image_id in range(1, 31):
            px, objects, owner = _render(np.random.default_rng([21, image_id]), 64, 4,
                                         look=look)
            px = px.astype(float)
            bg = px[owner < 0].mean(axis=0)
            contrast[label] += [np.linalg.norm(px[owner == i].mean(axis=0) - bg)
                                for i in range(len(objects))]
    assert np.median(contrast["drift"]) >= 0.8 * np.median(contrast["plain"])
    assert np.percentile(contrast["drift"], 10) > 60


def test_colour_drift_draws_other_colours_on_the_same_shapes(tmp_path, plain_world):
    from hitl_dev.synth import DRIFT_PALETTE, PALETTE

    generate(tmp_path, drift={"kinds": ["colour"]}, drift_val=0, **DRIFT_BASE)
    # colour draws as many random numbers as before: same shapes, same truth
    assert _load(tmp_path, "pool_truth") == _load(plain_world, "pool_truth")
    assert not set(DRIFT_PALETTE) & set(PALETTE)
    palette = np.array(PALETTE, float)
    sat = {"plain": [], "drift": []}
    dist = {"plain": [], "drift": []}
    for image_id in range(1, 31):
        for label, look in (("plain", frozenset()), ("drift", frozenset({"colour"}))):
            px, objects, owner = _render(np.random.default_rng([21, image_id]), 64, 4,
                                         look=look)
            for index in range(len(objects)):
                c = px[owner == index].astype(float).mean(axis=0)
                sat[label].append(c.max() - c.min())
                dist[label].append(np.linalg.norm(palette - c, axis=1).min())
    assert len(sat["drift"]) == len(sat["plain"]) > 50
    assert np.median(sat["drift"]) < 0.5 * np.median(sat["plain"])  # muted
    assert np.median(dist["drift"]) > 2 * np.median(dist["plain"])  # not the old palette
    assert np.median(sat["drift"]) > 10  # still coloured, not grey


def test_scale_drift_makes_every_object_small(tmp_path, plain_world):
    generate(tmp_path, drift={"kinds": ["scale"]}, drift_val=4, **DRIFT_BASE)
    sides = [max(a["bbox"][2:]) for n in ("pool_truth", "val_drifted")
             for a in _load(tmp_path, n)["annotations"]]
    assert len(sides) >= 12 and max(sides) <= 0.12 * 64 + 2
    plain = [max(a["bbox"][2:]) for a in _load(plain_world, "pool_truth")["annotations"]]
    assert max(plain) > 0.12 * 64 + 2 and np.median(sides) < 0.5 * np.median(plain)
    # a range of one's own
    generate(tmp_path / "big", train=0, val=0, pool=6, classes=3, imgsz=64, seed=2,
             drift={"kinds": ["scale"], "scale": [0.4, 0.45]})
    big = [max(a["bbox"][2:]) for a in _load(tmp_path / "big", "pool_truth")["annotations"]]
    assert big and max(big) <= 0.45 * 64 + 2 and np.median(big) > 0.25 * 64


def test_class_mix_drift_skews_the_classes(tmp_path):
    generate(tmp_path, train=0, val=8, pool=60, classes=4, imgsz=64, seed=3,
             drift={"kinds": ["class_mix"]}, drift_val=4)
    counts = np.bincount([a["category_id"] for a in _load(tmp_path, "pool_truth")[
        "annotations"]], minlength=5)[1:]
    assert 0.6 < counts[3] / counts.sum() < 0.8  # the last class, 70 % by default
    assert all(0.03 < c / counts.sum() < 0.2 for c in counts[:3])
    val = np.bincount([a["category_id"] for a in _load(tmp_path, "val")["annotations"]],
                      minlength=5)[1:]
    assert val[3] / val.sum() < 0.5  # val keeps the original, uniform mix
    generate(tmp_path / "own", train=0, val=0, pool=5, classes=4, imgsz=64, seed=3,
             drift={"kinds": ["class_mix"], "class_mix": [0, 0, 1, 0]}, drift_val=3)
    got = {a["category_id"] for n in ("pool_truth", "val_drifted")
           for a in _load(tmp_path / "own", n)["annotations"]}
    assert got == {3}


def test_share_drifts_about_half_and_the_report_lists_exactly_those(tmp_path):
    kwargs = dict(train=0, val=0, pool=40, classes=3, imgsz=64, seed=1, drift_val=0)
    generate(tmp_path / "plain", **{k: v for k, v in kwargs.items() if k != "drift_val"})
    summary = generate(tmp_path / "half", drift={"kinds": ["background", "scale"],
                                                 "share": 0.5}, **kwargs)
    report = json.loads((tmp_path / "half" / "drift_report.json").read_text())
    listed = {int(k) for k in report["images"]}
    assert 12 <= len(listed) <= 28
    assert all(v == ["background", "scale"] for v in report["images"].values())
    assert report["counts"] == {"pool": len(listed), "val_drifted": 0}
    assert summary["drift"]["pool_drifted"] == len(listed)
    plain, half = _all_files(tmp_path / "plain"), _all_files(tmp_path / "half")
    for image_id in range(1, 41):  # an image not listed is drawn exactly as without drift
        name = f"images/pool/{image_id:06d}.png"
        assert (half[name] != plain[name]) == (image_id in listed), image_id


@pytest.mark.parametrize("bad, match", [
    ({"drift": {"kinds": ["fog"]}},
     "drift.kinds: unknown kind 'fog'; use background, colour, scale, class_mix"),
    ({"drift": {"kinds": []}}, "drift.kinds"),
    ({"drift": {"kinds": ["scale"], "share": 0}}, r"drift.share must be in \(0, 1\]"),
    ({"drift": {"kinds": ["scale"], "share": 1.5}}, "drift.share"),
    ({"drift": {"kinds": ["scale"], "scale": [0.2, 0.1]}}, "drift.scale"),
    ({"drift": {"kinds": ["scale"], "scale": [0.0, 0.1]}}, "drift.scale"),
    ({"drift": {"kinds": ["scale"], "scale": [0.1, 0.7]}}, "drift.scale"),
    ({"drift": {"kinds": ["scale"], "scale": [0.1]}}, "drift.scale"),
    ({"drift": {"kinds": ["class_mix"], "class_mix": [1, 2]}},
     "drift.class_mix has 2 weights for 3 classes"),
    ({"drift": {"kinds": ["class_mix"], "class_mix": [0, 0, 0]}}, "drift.class_mix weights"),
    ({"drift": {"kinds": ["colour"], "class_mix": [1, 1, 1]}}, "drift.class_mix is given"),
    ({"drift": {"kinds": ["colour"], "fog": 1}}, "drift: unknown key"),
    ({"drift": {"kinds": ["colour"]}, "drift_val": -1}, "drift_val must be >= 0"),
    ({"drift_val": 3}, "drift_val needs a drift spec"),
])
def test_bad_drift_settings_name_the_field(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, train=2, val=1, pool=0, classes=3, imgsz=64, **bad)
    assert not (tmp_path / "annotations").exists()  # rejected before anything is written


def test_cli_drift_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--drift-class-mix" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "d"), "--train", "1", "--val", "1", "--pool", "4",
                 "--imgsz", "48", "--classes", "3", "--drift", "scale,class_mix",
                 "--drift-share", "1", "--drift-class-mix", "0,1,0", "--drift-scale",
                 "0.1,0.15", "--drift-val", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"train": 1, "val": 1, "pool": 4, "val_drifted": 2}
    assert summary["drift"] == {"kinds": ["scale", "class_mix"], "share": 1.0,
                                "pool_drifted": 4, "val_drifted": 2}
    report = json.loads((tmp_path / "d" / "drift_report.json").read_text())
    assert report["spec"] == {"kinds": ["scale", "class_mix"], "share": 1.0,
                              "class_mix": [0.0, 1.0, 0.0], "scale": [0.1, 0.15]}
    assert {a["category_id"] for a in _load(tmp_path / "d", "val_drifted")["annotations"]} \
        == {2}
    for bad in (["--drift", "fog"], ["--drift", "scale", "--drift-scale", "0.3,0.1"],
                ["--drift", "scale", "--drift-scale", "x"], ["--drift-share", "0.5"],
                ["--drift", "colour", "--drift-share", "2"], ["--drift-val", "3"]):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "e"), *bad])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "drift.kinds: unknown kind 'fog'" in err and "need(s) --drift KINDS" in err
