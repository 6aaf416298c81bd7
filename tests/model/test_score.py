"""Scoring: matching and uncertainty maths on hand-made boxes, then one small real model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from hitl_plugin.boxes import iou_matrix
from hitl_plugin.config import SelectionConfig
from hitl_plugin.model.score import (
    KIND_WEIGHTS,
    aggregate,
    find_suspicions,
    score_record,
    uncertainty_of,
)
from hitl_plugin.model.train import BUILTIN_BASE
from hitl_plugin.schemas import ImageScore, Suspicion

CATS = [1, 2, 3]


def lab(i, bbox, cls):
    return {"id": i, "image_id": 1, "bbox": bbox, "category_id": cls}


def pred(bbox, cls, score, probs=None):
    if probs is None:
        probs = [0.01] * 3
        probs[CATS.index(cls)] = score
    return {"bbox": bbox, "category_id": cls, "score": score, "class_probs": probs}


def kinds(sus):
    return sorted((s.kind, s.label_ann_id) for s in sus)


# -- uncertainty ------------------------------------------------------------------


def test_uncertainty_measures_by_hand():
    u = uncertainty_of([[0.9, 0.05, 0.05]])
    assert u["least_confidence"] == pytest.approx(0.1)
    assert u["margin"] == pytest.approx(1 - 0.85)
    p = np.array([0.9, 0.05, 0.05]) / 1.0
    h = -(p * np.log(p)).sum() / math.log(3)
    assert u["entropy"] == pytest.approx(h, abs=1e-4)


def test_uncertainty_normalizes_sigmoid_scores_for_entropy():
    # Sigmoid scores need not sum to one: (0.4, 0.4, 0.0) is as ambiguous as (0.5, 0.5, 0)
    a = uncertainty_of([[0.4, 0.4, 0.0]])
    b = uncertainty_of([[0.5, 0.5, 0.0]])
    assert a["entropy"] == pytest.approx(b["entropy"]) == pytest.approx(math.log(2) / math.log(3),
                                                                          abs=1e-4)
    assert a["margin"] == pytest.approx(1.0)
    assert a["least_confidence"] == pytest.approx(0.6)


def test_uncertainty_takes_most_doubtful_detection_and_no_detection_is_max():
    u = uncertainty_of([[0.95, 0.0, 0.0], [0.3, 0.28, 0.0]])
    assert u["least_confidence"] == pytest.approx(0.7)
    assert u["margin"] == pytest.approx(0.98)
    assert uncertainty_of([]) == {"least_confidence": 1.0, "margin": 1.0, "entropy": 1.0}
    confident = uncertainty_of([[0.99, 0.001, 0.001]])
    assert all(confident[k] < uncertainty_of([[0.5, 0.4, 0.1]])[k] for k in confident)


# -- suspicions ---------------------------------------------------------------------------


def test_clean_image_has_no_suspicion():
    labels = [lab(1, [10, 10, 20, 20], 1), lab(2, [50, 50, 20, 20], 2)]
    preds = [pred([10.5, 10, 20, 20], 1, 0.9), pred([50, 50, 21, 20], 2, 0.8),
             pred([80, 80, 10, 10], 3, 0.1)]  # a weak box on nothing: below conf, not missing
    assert find_suspicions(labels, preds, CATS) == []


def test_each_kind_is_found_with_its_boxes():
    labels = [
        lab(1, [10, 10, 20, 20], 1),     # fine
        lab(2, [50, 50, 20, 20], 2),     # the model sees class 1 here: class swap
        lab(3, [100, 10, 20, 20], 1),    # nothing there: spurious
        lab(4, [10, 100, 20, 20], 1),    # the object is shifted: bad box
    ]
    preds = [
        pred([10, 10, 20, 20], 1, 0.9),
        pred([50, 50, 20, 20], 1, 0.8, [0.8, 0.1, 0.02]),
        pred([16, 106, 20, 20], 1, 0.85),
        pred([150, 150, 20, 20], 2, 0.7),  # no label: missing
    ]
    sus = find_suspicions(labels, preds, CATS)
    assert kinds(sus) == [("bad_box", 4), ("class_swap", 2), ("missing", None), ("spurious", 3)]
    by = {s.kind: s for s in sus}
    assert by["class_swap"].score == pytest.approx(0.8 * (1 - 0.1))
    assert by["class_swap"].pred_category_id == 1 and by["class_swap"].label_category_id == 2
    assert by["missing"].pred_bbox == [150, 150, 20, 20] and by["missing"].score == 0.7
    assert by["spurious"].score == pytest.approx(KIND_WEIGHTS["spurious"])
    assert by["spurious"].pred_bbox is None
    assert by["bad_box"].iou == pytest.approx(iou_matrix([[10, 100, 20, 20]],
                                                         [[16, 106, 20, 20]])[0, 0], abs=1e-4)


def test_class_swap_softened_when_model_also_likes_labeled_class():
    labels = [lab(1, [10, 10, 20, 20], 2)]
    sure = find_suspicions(labels, [pred([10, 10, 20, 20], 1, 0.9, [0.9, 0.02, 0.0])], CATS)
    torn = find_suspicions(labels, [pred([10, 10, 20, 20], 1, 0.9, [0.9, 0.6, 0.0])], CATS)
    assert sure[0].kind == torn[0].kind == "class_swap"
    assert sure[0].score > torn[0].score


def test_weak_support_prevents_spurious_and_low_conf_swap_is_not_a_swap():
    labels = [lab(1, [10, 10, 20, 20], 1)]
    # a weak (0.15) box of the labeled class: below conf but the label is supported
    sus = find_suspicions(labels, [pred([10, 10, 20, 20], 1, 0.15)], CATS)
    assert sus == []
    # a weak box of another class does not make a class swap
    sus = find_suspicions(labels, [pred([10, 10, 20, 20], 2, 0.1)], CATS)
    assert [s.kind for s in sus] == ["spurious"]


def test_bad_box_needs_same_class_and_matched_low_iou_box_is_bad_box():
    labels = [lab(1, [10, 10, 20, 20], 1)]
    # matched (IoU ~0.6 >= 0.5) but below bad_box_iou 0.75
    sus = find_suspicions(labels, [pred([14, 10, 20, 20], 1, 0.9)], CATS)
    assert [s.kind for s in sus] == ["bad_box"]
    assert 0 < sus[0].score < 0.9
    # a well-drawn box: nothing
    assert find_suspicions(labels, [pred([11, 10, 20, 20], 1, 0.9)], CATS) == []
    # shifted box of another class: the label is spurious and the box is missing
    sus = find_suspicions(labels, [pred([18, 18, 20, 20], 2, 0.9)], CATS)
    assert sorted(s.kind for s in sus) == ["missing", "spurious"]


def test_duplicate_boxes_of_two_classes_do_not_make_missing():
    labels = [lab(1, [10, 10, 20, 20], 1)]
    preds = [pred([10, 10, 20, 20], 1, 0.9, [0.9, 0.4, 0.0]),
             pred([10, 10, 20, 20], 2, 0.4, [0.9, 0.4, 0.0])]
    assert find_suspicions(labels, preds, CATS) == []


def test_aggregate_is_noisy_or():
    s = [Suspicion(kind="missing", score=0.5), Suspicion(kind="spurious", score=0.5)]
    assert aggregate(s) == pytest.approx(0.75)
    assert aggregate([]) == 0.0
    assert aggregate([Suspicion(kind="missing", score=0.9)]) > aggregate(s[:1])


def test_score_record_pool_has_no_suspicions_and_keeps_confident_predictions():
    sel = SelectionConfig()
    img = {"id": 7, "file_name": "x.png", "width": 64, "height": 64, "hitl_split": "pool"}
    preds = [pred([1, 1, 5, 5], 1, 0.9), pred([30, 30, 5, 5], 2, 0.1)]
    rec = score_record(img, [], preds, CATS, sel)
    assert rec.split == "pool" and rec.suspicions == [] and rec.label_error_score == 0.0
    assert [p.score for p in rec.predictions] == [0.9]
    assert rec.uncertainty["least_confidence"] == pytest.approx(0.1)
    train = {**img, "hitl_split": "train"}
    rec = score_record(train, [lab(1, [40, 40, 5, 5], 3)], preds, CATS, sel)
    assert sorted(s.kind for s in rec.suspicions) == ["missing", "spurious"]
    assert rec.label_error_score == pytest.approx(1 - (1 - KIND_WEIGHTS["spurious"]) * (1 - 0.9))
    assert ImageScore.model_validate_json(rec.model_dump_json()) == rec


def test_crowd_regions_are_not_scored_and_boxes_inside_them_are_not_missing():
    """Issue 15: a crowd annotation is not a label to check, and the people the model finds
    inside a crowd region are not missing labels."""
    sel = SelectionConfig()
    img = {"id": 1, "file_name": "x.png", "width": 100, "height": 100, "hitl_split": "train"}
    crowd = {**lab(9, [50, 50, 40, 40], 1), "iscrowd": 1}
    labels = [lab(1, [10, 10, 20, 20], 1), crowd]
    preds = [pred([10, 10, 20, 20], 1, 0.9),  # the labeled object
             pred([55, 55, 10, 10], 1, 0.9), pred([70, 60, 12, 20], 1, 0.8),  # in the crowd
             pred([85, 85, 14, 14], 2, 0.7)]  # mostly outside it: a missing label
    rec = score_record(img, labels, preds, CATS, sel)
    assert [(s.kind, s.pred_bbox) for s in rec.suspicions] == [("missing", [85, 85, 14, 14])]
    assert rec.n_labels == 1
    # a crowd with no box of the model in it is not "spurious" either
    rec = score_record(img, labels, preds[:1], CATS, sel)
    assert rec.suspicions == [] and rec.label_error_score == 0.0


# -- streaming ----------------------------------------------------------------------------


def test_predict_is_fed_a_list_file_not_a_python_list(tmp_path, monkeypatch):
    """score_images hands Ultralytics one .txt path (streamed), never a list of paths."""
    from hitl_plugin.model import score as score_mod

    seen = {}

    def fake_stream(checkpoint, list_file, **kw):
        seen["arg"] = list_file
        seen["lines"] = list_file.read_text().split()
        for line in seen["lines"]:
            yield line, [{"bbox": [1, 1, 4, 4], "cls": 0, "score": 0.9,
                          "class_probs": [0.9, 0.0, 0.0]}]

    monkeypatch.setattr(score_mod, "predict_stream", fake_stream)
    root = tmp_path / "root"
    (root / "images" / "d").mkdir(parents=True)
    images = []
    for i in range(1, 4):
        (root / "images" / "d" / f"{i}.png").write_bytes(b"")
        images.append({"id": i, "file_name": f"d/{i}.png", "width": 8, "height": 8,
                       "hitl_split": "train" if i < 3 else "pool"})
    coco = {"images": images, "annotations": [lab(1, [1, 1, 4, 4], 1)],
            "categories": [{"id": c, "name": str(c)} for c in CATS]}
    out = tmp_path / "scores.jsonl"
    res = score_mod.score_images("m.pt", coco, root, out, selection=SelectionConfig(), imgsz=64)
    assert isinstance(seen["arg"], type(out)) and seen["arg"].suffix == ".txt"
    assert len(seen["lines"]) == 3 and all(line.endswith(".png") for line in seen["lines"])
    assert not seen["arg"].exists()  # removed afterwards
    assert res["n_images"] == 3 and res["scores"] == str(out)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image_id"] for r in recs] == [1, 2, 3]
    assert recs[1]["suspicions"][0]["kind"] == "missing"  # image 2 has no label
    assert recs[0]["suspicions"] == []


# -- a real model -------------------------------------------------------------------------

BASE = Path(os.environ.get("HITL_TEST_BASE_CHECKPOINT") or BUILTIN_BASE)  # the package's


@pytest.fixture(scope="module")
def clean_model(tmp_path_factory):
    """A model fine-tuned two epochs on clean synthetic labels (from the shipped base)."""
    assert BASE.is_file(), f"{BASE} is missing (make base-checkpoint)"
    from hitl_dev.base_checkpoint import tiny_export
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.model.train import train

    work = tmp_path_factory.mktemp("score")
    data_yaml, _, root = tiny_export(work, train=24, val=8, classes=4, imgsz=128, seed=21,
                                     name="shapes")
    coco = DatasetStore(root, "shapes").load()
    result = train(data_yaml, work / "model", weights=BASE, epochs=2, imgsz=128, batch=8,
                   device="cpu")
    return work, root, coco, Path(result["checkpoint"])


def _shift(bbox, size):
    """The same box moved half its width sideways (IoU 1/3 with the original)."""
    x, y, w, h = bbox
    nx = x + w / 2 if x + 1.5 * w <= size else x - w / 2
    return [nx, y, w, h]


def _free_square(boxes, size, side=20):
    for y in range(0, size - side, 4):
        for x in range(0, size - side, 4):
            cand = [x, y, side, side]
            if not len(boxes) or iou_matrix([cand], boxes).max() == 0:
                return cand
    return None


@pytest.mark.slow
def test_real_model_finds_the_errors_we_inject(clean_model, tmp_path, monkeypatch):
    from ultralytics.engine.model import Model

    from hitl_plugin.model.score import score_images

    work, root, coco, checkpoint = clean_model
    sel = SelectionConfig()
    calls = []
    real_predict = Model.predict

    def spy(self, source=None, stream=False, **kw):
        calls.append((source, stream))
        return real_predict(self, source, stream, **kw)

    monkeypatch.setattr(Model, "predict", spy)
    first = score_images(checkpoint, coco, root, tmp_path / "clean.jsonl", selection=sel,
                         imgsz=128, device="cpu")
    # streaming: one call, with the path of a .txt list, stream=True
    assert len(calls) == 1 and isinstance(calls[0][0], str) and calls[0][0].endswith(".txt")
    assert calls[0][1] is True
    assert first["n_images"] == 24
    clean = {r.image_id: r for r in map(ImageScore.model_validate_json,
                                        Path(first["scores"]).read_text().splitlines())}

    # boxes the model clearly sees, on images it finds clean
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    seen = []
    for image_id, rec in sorted(clean.items()):
        if rec.label_error_score > 0.3:
            continue
        for a in anns.get(image_id, []):
            for p in rec.predictions:
                ov = iou_matrix([a["bbox"]], [p.bbox])[0, 0]
                if p.category_id == a["category_id"] and p.score >= 0.6 and ov >= 0.8:
                    seen.append((image_id, a, p))
                    break
            if seen and seen[-1][0] == image_id:
                break
    assert len(seen) >= 4, f"the model sees too little to test with: {len(seen)} images"
    (ia, a_ann, _), (ib, b_ann, _), (ic, c_ann, _), (id_, _, _) = seen[:4]
    size = 128
    spurious_box = _free_square(
        np.array([a["bbox"] for a in anns[id_]] + [p.bbox for p in clean[id_].predictions]),
        size)
    assert spurious_box is not None
    swap_to = next(c["id"] for c in coco["categories"] if c["id"] != b_ann["category_id"])
    new_id = max(a["id"] for a in coco["annotations"]) + 1
    annotations = []
    for a in coco["annotations"]:
        if a["id"] == a_ann["id"]:
            continue  # A: the label of a visible object is deleted -> missing
        if a["id"] == b_ann["id"]:
            a = {**a, "category_id": swap_to}  # B: wrong class -> class_swap
        if a["id"] == c_ann["id"]:
            a = {**a, "bbox": _shift(a["bbox"], size)}  # C: box off the object -> bad_box
        annotations.append(a)
    annotations.append({"id": new_id, "image_id": id_, "category_id": 1, "bbox": spurious_box,
                        "area": 400.0, "iscrowd": 0})  # D: a box on background -> spurious
    noisy = {**coco, "annotations": annotations}
    second = score_images(checkpoint, noisy, root, tmp_path / "noisy.jsonl", selection=sel,
                          imgsz=128, device="cpu", splits=("train",))
    recs = {r.image_id: r for r in map(ImageScore.model_validate_json,
                                       Path(second["scores"]).read_text().splitlines())}

    def found(image_id, kind, ann_id=None):
        return [s for s in recs[image_id].suspicions
                if s.kind == kind and (ann_id is None or s.label_ann_id == ann_id)]

    missing = found(ia, "missing")
    assert missing and iou_matrix([a_ann["bbox"]], [missing[0].pred_bbox])[0, 0] >= 0.8
    assert found(ib, "class_swap", b_ann["id"])[0].pred_category_id == b_ann["category_id"]
    assert found(ic, "bad_box", c_ann["id"])
    assert found(id_, "spurious", new_id)
    # each edit raises its image's score well above what the clean labels scored (spurious
    # scores are scaled down, since models miss real objects too: checked against that scale)
    for image_id in (ia, ib, ic):
        before, after = clean[image_id].label_error_score, recs[image_id].label_error_score
        assert after >= max(before + 0.25, 0.4), (image_id, before, recs[image_id])
    assert found(id_, "spurious", new_id)[0].score >= 0.9 * KIND_WEIGHTS["spurious"]
    # images left alone score as before (same model, same labels)
    for image_id in set(recs) - {ia, ib, ic, id_}:
        assert recs[image_id].label_error_score == clean[image_id].label_error_score


@pytest.mark.slow
def test_the_drift_inputs_come_from_the_same_single_pass(clean_model, tmp_path, monkeypatch):
    """With ``drift_out`` the one prediction pass also embeds every image (and predicts the
    held-out set); the scores are the same as without it."""
    from ultralytics.engine.model import Model

    from hitl_plugin.model import yolo
    from hitl_plugin.model.drift import DriftInputs
    from hitl_plugin.model.score import score_images

    work, root, coco, checkpoint = clean_model
    from hitl_plugin.paths import Layout

    val = json.loads(Layout.at(root).val_file("shapes").read_text())
    plain = score_images(checkpoint, coco, root, tmp_path / "plain.jsonl",
                         selection=SelectionConfig(), imgsz=128, device="cpu")
    calls = []
    real_predict = Model.predict

    def spy(self, source=None, stream=False, **kw):
        calls.append(source)
        return real_predict(self, source, stream, **kw)

    monkeypatch.setattr(Model, "predict", spy)
    out = score_images(checkpoint, coco, root, tmp_path / "with.jsonl",
                       selection=SelectionConfig(), imgsz=128, device="cpu",
                       drift_out=tmp_path / "drift_inputs.npz", reference=val)
    assert len(calls) == 1  # one pass for scores, embeddings and the held-out set
    assert Path(out["scores"]).read_bytes() == Path(plain["scores"]).read_bytes()
    inputs = DriftInputs.load(out["drift_inputs"])
    assert sorted(set(inputs.split)) == ["heldout", "train"]
    assert (inputs.split == "heldout").sum() == len(val["images"])
    assert (inputs.split == "train").sum() == 24
    assert inputs.embedding.shape == (24 + len(val["images"]), 256)  # YOLOv8n's SPPF
    assert np.isfinite(inputs.embedding).all() and inputs.embedding.std() > 0
    # the embedding is the backbone's last layer, pooled
    import torch

    model = yolo.load_offline_yolo(checkpoint).model.eval()
    grabbed = {}

    def keep(_module, _inputs, output):
        grabbed["x"] = output.mean(dim=(2, 3))

    yolo.backbone_output(model).register_forward_hook(keep)
    assert type(yolo.backbone_output(model)).__name__ == "SPPF"
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert grabbed["x"].shape == (1, 256)
    with pytest.raises(TypeError, match="backbone"):
        yolo.backbone_output(torch.nn.Linear(2, 2))
