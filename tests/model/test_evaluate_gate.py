"""COCO evaluation (pycocotools, our category ids) and the promotion gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hitl_plugin.model.evaluate import coco_metrics, to_coco_predictions
from hitl_plugin.model.gate import apply_gate, approval_body, decide, promote, promoted
from hitl_plugin.model.train import BUILTIN_BASE
from hitl_plugin.paths import Layout, ModelPaths

VAL = {
    "images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 100},
               {"id": 9, "file_name": "b.png", "width": 100, "height": 100}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 30, "bbox": [10, 10, 20, 20], "area": 400,
         "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 70, "bbox": [50, 40, 30, 20], "area": 600,
         "iscrowd": 0},
    ],
    "categories": [{"id": 70, "name": "star"}, {"id": 30, "name": "circle"}],
}


def test_perfect_predictions_score_one_and_per_class():
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
              "score": 0.9} for a in VAL["annotations"]]
    m = coco_metrics(VAL, preds)
    assert m["map50_95"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx(1.0)
    assert m["per_class"] == {"circle": pytest.approx(1.0), "star": pytest.approx(1.0)}


def test_wrong_class_or_no_prediction_scores_zero_without_error():
    swapped = [{"image_id": 5, "category_id": 70, "bbox": [10, 10, 20, 20], "score": 0.9}]
    assert coco_metrics(VAL, swapped)["map50_95"] == 0.0
    empty = coco_metrics(VAL, [])  # COCO.loadRes([]) would raise IndexError
    assert empty == {"map50_95": 0.0, "map50": 0.0, "per_class": {"circle": 0.0, "star": 0.0}}


def test_a_prediction_on_a_crowd_region_is_not_a_false_positive():
    """COCOeval treats ``iscrowd: 1`` as a region to ignore: detections in it neither count
    as false positives nor are needed (issue 15)."""
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.5} for a in VAL["annotations"]]
    in_crowd = [{"image_id": 5, "category_id": 30, "bbox": [62, 62, 20, 20], "score": 0.9}]
    crowd = {"id": 3, "image_id": 5, "category_id": 30, "bbox": [60, 60, 35, 35],
             "area": 1225, "iscrowd": 1}
    with_crowd = {**VAL, "annotations": VAL["annotations"] + [crowd]}
    assert coco_metrics(with_crowd, perfect + in_crowd)["map50_95"] == pytest.approx(1.0)
    # the same box where there is no crowd: a confident false positive, precision drops
    not_crowd = {**VAL, "annotations": VAL["annotations"] + [{**crowd, "iscrowd": 0,
                                                              "bbox": [0, 60, 20, 20]}]}
    assert coco_metrics(not_crowd, perfect + in_crowd)["map50_95"] < 0.9


def test_ultralytics_class_index_maps_to_coco_category_id():
    # Export order is categories sorted by id: index 0 -> 30 (circle), 1 -> 70 (star).
    # Ultralytics writes category_id = index + 1 and image_id = the file stem.
    raw = [{"image_id": 5, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8},
           {"image_id": "9", "category_id": 2, "bbox": [50, 40, 30, 20], "score": 0.7},
           {"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.7},  # not in val
           {"image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.7}]  # no class
    mapped = to_coco_predictions(raw, VAL)
    assert [(p["image_id"], p["category_id"]) for p in mapped] == [(5, 30), (9, 70)]
    assert coco_metrics(VAL, mapped)["map50_95"] == pytest.approx(1.0)


@pytest.mark.slow
def test_evaluate_matches_ultralytics_own_map_with_remapped_category_ids(tmp_path):
    """The base checkpoint on fresh synthetic data whose category ids are 10, 20, 30, 40:
    a wrong id mapping would score ~0; ours matches Ultralytics' own mAP."""
    assert BUILTIN_BASE.is_file(), "the packaged base checkpoint is missing"
    from hitl_dev.synth import generate
    from hitl_plugin.dataset.export import export_yolo
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.model.evaluate import evaluate
    from hitl_plugin.model.yolo import import_ultralytics

    src = tmp_path / "src"
    generate(src, train=4, val=40, pool=0, classes=4, imgsz=128, noise=0.0, seed=4242)
    for name in ("train", "val"):
        path = src / "annotations" / f"{name}.json"
        coco = json.loads(path.read_text())
        for c in coco["categories"]:
            c["id"] *= 10
        for a in coco["annotations"]:
            a["category_id"] *= 10
        path.write_text(json.dumps(coco))
    (src / "annotations" / "pool.json").unlink(missing_ok=True)
    root = tmp_path / "store"
    store = DatasetStore(root, "eval")
    version = store.import_source(src)
    val_file = Layout.at(root).val_file("eval")
    data = export_yolo(root, "eval", version, store.load(version),
                       json.loads(val_file.read_text()))
    ckpt = tmp_path / "base.pt"
    shutil.copy(BUILTIN_BASE, ckpt)
    metrics = evaluate(ckpt, data, val_file, ModelPaths(tmp_path), imgsz=160)
    assert metrics["n_images"] == 40 and metrics["n_predictions"] > 0
    # the histogram the round report plots, from this same pass over the held-out set
    hist = metrics["confidences"]
    assert hist["bins"] == 20 and 0 < sum(hist["counts"]) <= metrics["n_predictions"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", "star"}
    own = import_ultralytics().YOLO(str(ckpt)).val(
        data=str(data), imgsz=160, batch=16, plots=False, verbose=False, device="cpu",
        project=str(tmp_path / "own"), name="v", exist_ok=True)
    print(f"pycocotools mAP50-95 {metrics['map50_95']:.4f}, Ultralytics {own.box.map:.4f}")
    assert metrics["map50_95"] > 0.3
    assert metrics["map50_95"] == pytest.approx(own.box.map, abs=0.03)


# -- gate -------------------------------------------------------------------------------


def _ckpt(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "runs" / name / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(name.encode())
    return path


def test_first_checkpoint_is_promoted_and_copied(tmp_path):
    root = tmp_path / "root"
    verdict = decide(root, "d", {"map50_95": 0.1})
    assert verdict["promote"] is True and verdict["current"] is None
    record = promote(root, "d", _ckpt(tmp_path, "r1"), {"map50_95": 0.1}, "r1")
    assert Path(record["checkpoint"]) == Layout.at(root).root / "models/d/promoted/r1.pt"
    shutil.rmtree(tmp_path / "runs")  # cleaning up run folders must not break it
    assert Path(promoted(root, "d")["checkpoint"]).read_bytes() == b"r1"
    assert json.loads(Layout.at(root).promoted_file("d").read_text()) == record


def test_gate_promotes_only_a_better_checkpoint_with_margin(tmp_path):
    root = tmp_path / "root"
    promote(root, "d", _ckpt(tmp_path, "r1"), {"map50_95": 0.5, "map50": 0.7}, "r1")
    assert decide(root, "d", {"map50_95": 0.5})["promote"] is False  # equal is not better
    assert decide(root, "d", {"map50_95": 0.55}, margin=0.05)["promote"] is False
    assert decide(root, "d", {"map50_95": 0.56}, margin=0.05)["promote"] is True
    low = decide(root, "d", {"map50_95": 0.6, "map50": 0.6}, metric="map50")
    assert low["promote"] is False and low["current"] == 0.7 and "r1" in low["reason"]
    with pytest.raises(ValueError):
        decide(root, "d", {"map50": 0.9})


def test_apply_gate_keeps_current_and_is_idempotent_on_retry(tmp_path):
    root = tmp_path / "root"
    first = apply_gate(root, "d", "r1", _ckpt(tmp_path, "r1"), {"map50_95": 0.4})
    assert first["promoted"] is True and first["model_version"] == "d/r1"
    worse = apply_gate(root, "d", "r2", _ckpt(tmp_path, "r2"), {"map50_95": 0.3})
    assert worse["promoted"] is False
    assert worse["checkpoint"] == first["checkpoint"]  # score with the promoted model
    assert worse["metrics"] == {"map50_95": 0.4}
    better = apply_gate(root, "d", "r3", _ckpt(tmp_path, "r3"), {"map50_95": 0.45})
    assert better["promoted"] is True and better["checkpoint"].endswith("r3.pt")
    retry = apply_gate(root, "d", "r3", _ckpt(tmp_path, "r3"), {"map50_95": 0.45})
    assert retry["promoted"] is True and retry["checkpoint"] == better["checkpoint"]
    history = (Layout.at(root).root / "models/d/promoted/history.jsonl").read_text().splitlines()
    assert [json.loads(h)["run_id"] for h in history] == ["r1", "r3"]


def test_approval_body_is_markdown_with_the_metrics():
    body = approval_body({"map50_95": 0.61234, "map50": 0.9, "n_images": 50,
                          "per_class": {"circle": 0.7}, "checkpoint": "/x/best.pt"})
    assert "| map50_95 | none yet | 0.6123 |" in body
    assert "| circle | - | 0.7000 |" in body and "`/x/best.pt`" in body
    assert approval_body({}).startswith("No metrics")
