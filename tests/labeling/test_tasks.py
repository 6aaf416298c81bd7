"""Conversions between our samples and Label Studio tasks, and validation of results."""

from __future__ import annotations

import math

import pytest

from hitl_plugin.labeling.project import config_labels
from hitl_plugin.labeling.tasks import (
    InvalidResult,
    box_to_region,
    hitl_key,
    image_url,
    label_config,
    reason_text,
    region_to_box,
    to_task,
)
from hitl_plugin.schemas import SelectedSample

NAMES = {1: "circle", 2: "square", 3: "triangle"}
CATS = {v: k for k, v in NAMES.items()}


def sample(**kw) -> SelectedSample:
    base = dict(image_id=17, file_name="shapes/000017.png", width=160, height=120,
                split="train", reason="label_error", score=0.8,
                labels=[{"id": 5, "bbox": [12, 20, 30, 40], "category_id": 1},
                        {"id": 6, "bbox": [60, 60, 20, 20], "category_id": 3}],
                suspicions=[{"kind": "class_swap", "score": 0.9, "label_ann_id": 5,
                             "label_category_id": 1, "pred_category_id": 2,
                             "pred_bbox": [10, 20, 30, 40]},
                            {"kind": "missing", "score": 0.6, "pred_category_id": 3,
                             "pred_bbox": [100, 60, 50, 50]}],
                predictions=[{"bbox": [10, 20, 30, 40], "category_id": 2, "score": 0.91},
                             {"bbox": [100, 60, 50, 50], "category_id": 3, "score": 0.4},
                             {"bbox": [1, 1, 2, 2], "category_id": 99, "score": 0.3}])
    return SelectedSample.model_validate({**base, **kw})


def _by(result, control):
    return {r["id"]: r for r in result if r["from_name"] == control}


def test_a_labeled_image_starts_from_its_current_labels_with_its_suspicions_on_them():
    task = to_task(sample(), dag_id="dag", run_id="manual__1", model_version="m7",
                   names=NAMES, batch="0-50")
    data = task["data"]
    assert {k: data[k] for k in ("image", "hitl_key", "hitl_dag_id", "hitl_run_id",
                                 "hitl_image_id", "hitl_split", "hitl_batch")} == {
        "image": "/data/local-files/?d=images/shapes/000017.png",
        "hitl_key": "dag|manual__1|17", "hitl_dag_id": "dag", "hitl_run_id": "manual__1",
        "hitl_image_id": 17, "hitl_split": "train", "hitl_batch": "0-50"}
    # Data Manager columns to sort and filter on
    assert (data["hitl_selected_as"], data["hitl_score"], data["hitl_kinds"]) == \
        ("label_error", 0.8, "class_swap,missing")
    assert data["hitl_reason"].splitlines() == [
        "Suspected label errors (2):",
        "- class swap? this circle looks like a square (0.90)",
        "- missing? the model sees a triangle here that has no label (0.60)"]
    start, model_set = task["predictions"]
    assert start["model_version"] == "m7" and model_set["model_version"] == "m7 model"
    labels = _by(start["result"], "label")
    assert sorted(labels) == ["l5", "l6"]  # the current labels, editable, by annotation id
    assert labels["l5"]["value"]["rectanglelabels"] == ["circle"]
    assert labels["l5"]["value"]["x"] == pytest.approx(100 * 12 / 160)
    assert labels["l5"]["score"] == 0.9 and "score" not in labels["l6"]
    faint = _by(start["result"], "model")  # the model's boxes beside them (unknown class left out)
    assert sorted(faint) == ["m0", "m1"] and faint["m1"]["score"] == 0.6
    issues = _by(start["result"], "issues")
    assert issues["l5"]["readonly"] and issues["l5"]["value"]["text"] == [
        "class swap? this circle looks like a square (0.90)"]
    assert issues["m1"]["value"]["text"] == [
        "missing? the model sees a triangle here that has no label (0.60)"]
    assert issues["l5"]["value"]["x"] == labels["l5"]["value"]["x"]  # tied to its box
    assert [r["value"]["rectanglelabels"] for r in model_set["result"]] == [["square"],
                                                                         ["triangle"]]
    # what comes back from the starting annotation, unchanged, is exactly the labels
    back = [region_to_box(r, width=160, height=120, categories=CATS)
            for r in start["result"] if r["from_name"] == "label"]
    assert [b.bbox[k] for b in back for k in range(4)] == pytest.approx(
        [12, 20, 30, 40, 60, 60, 20, 20], abs=1e-3)


def test_a_pool_image_starts_from_the_models_boxes():
    task = to_task(sample(split="pool", labels=[], suspicions=[], reason="uncertainty"),
                   dag_id="d", run_id="r", model_version="m7", names=NAMES)
    (start,) = task["predictions"]
    assert sorted(_by(start["result"], "label")) == ["m0", "m1"]
    assert not _by(start["result"], "model")
    assert task["data"]["hitl_reason"].startswith("A new image the model is unsure about")


def test_crowd_regions_are_shown_read_only_and_never_collected():
    """Issue 15: a crowd annotation is drawn for people, not given to them to edit."""
    from hitl_plugin.labeling.collect import task_to_correction
    from hitl_plugin.labeling.tasks import CROWD_TEXT, MODEL_NAME

    s = sample(crowd=[{"id": 40, "bbox": [80, 10, 60, 50], "category_id": 1}])
    task = to_task(s, dag_id="d", run_id="r", model_version="m1", names=NAMES)
    result = task["predictions"][0]["result"]
    (box,) = [r for r in result if r.get("id") == "c40" and r["type"] == "rectanglelabels"]
    assert box["from_name"] == MODEL_NAME and box["readonly"] is True and "score" not in box
    assert box["value"]["rectanglelabels"] == ["circle"]
    (text,) = [r for r in result if r.get("id") == "c40" and r["type"] == "textarea"]
    assert text["value"]["text"] == [CROWD_TEXT.format(label="circle")]
    assert "c40" not in _by(result, "label")
    # a person submits the view as it was: the crowd region is not a box of the answer
    task = {**task, "id": 3, "annotations": [{"id": 8, "result": result,
                                              "created_username": "a@x, 1"}]}
    corr = task_to_correction(task, dag_id="d", run_id="r", samples={17: s},
                              categories=CATS)
    assert corr.answer == "confirmed" and len(corr.boxes) == 2


def test_reason_texts():
    assert reason_text(sample(reason="audit", suspicions=[]), NAMES) == \
        "A random audit sample: check every box."
    many = [{"kind": "bad_box", "score": 0.5, "label_category_id": 1, "iou": 0.4}] * 7
    text = reason_text(sample(suspicions=many), NAMES)
    assert "bad box? this circle box looks off (overlap 0.40 with the model's) (0.50)" in text
    assert text.endswith("2 more (numbers in the Regions list)")


def test_only_the_editable_control_is_a_box():
    region = box_to_region([10, 10, 20, 20], "circle", 160, 120, from_name="model")
    with pytest.raises(InvalidResult, match="unknown control 'model'"):
        region_to_box(region, width=160, height=120, categories=CATS)


@pytest.mark.parametrize("bbox", [[10, 20, 30, 40], [0, 0, 160, 120], [0.5, 0.25, 1.5, 3.75],
                                  [123.456, 7.891, 11.1, 22.2]])
def test_round_trip_within_rounding(bbox):
    region = box_to_region(bbox, "triangle", 160, 120)
    box = region_to_box(region, width=160, height=120, categories=CATS)
    assert box.category_id == 3
    assert box.bbox == pytest.approx(bbox, abs=1e-3)


def test_our_image_size_wins_over_the_service():
    region = box_to_region([16, 12, 32, 24], "circle", 160, 120)
    region["original_width"], region["original_height"] = 9999, 1  # lies
    box = region_to_box(region, width=160, height=120, categories=CATS)
    assert box.bbox == pytest.approx([16, 12, 32, 24])


def test_small_overshoot_is_clipped_larger_is_rejected():
    region = box_to_region([150, 110, 10.5, 10.5], "circle", 160, 120)  # 0.3% / 0.4% out
    box = region_to_box(region, width=160, height=120, categories=CATS)
    assert box.bbox == pytest.approx([150, 110, 10, 10])
    with pytest.raises(InvalidResult, match="outside the image"):
        region_to_box(box_to_region([150, 110, 20, 10], "circle", 160, 120), width=160,
                      height=120, categories=CATS)
    with pytest.raises(InvalidResult, match="outside the image"):
        region_to_box(box_to_region([-5, 10, 20, 10], "circle", 160, 120), width=160,
                      height=120, categories=CATS)


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r["value"].update(rectanglelabels=["hexagon"]), "unknown class 'hexagon'"),
    (lambda r: r["value"].update(rectanglelabels=[]), "malformed region"),
    (lambda r: r["value"].update(rectanglelabels=["circle", "square"]), "malformed region"),
    (lambda r: r["value"].update(x=math.nan), "not a finite number"),
    (lambda r: r["value"].update(width=math.inf), "not a finite number"),
    (lambda r: r["value"].update(width="wide"), "malformed region"),
    (lambda r: r["value"].update(height=0), "no area"),
    (lambda r: r["value"].update(width=-3), "no area"),
    (lambda r: r["value"].update(rotation=15), "rotated"),
    (lambda r: r.update(type="polygonlabels"), "unsupported region type"),
    (lambda r: r.pop("value"), "malformed region"),
])
def test_invalid_results_are_rejected_with_a_reason(mutate, reason):
    region = box_to_region([10, 10, 20, 20], "circle", 160, 120)
    mutate(region)
    with pytest.raises(InvalidResult, match=reason.replace("(", r"\(")):
        region_to_box(region, width=160, height=120, categories=CATS)
    with pytest.raises(InvalidResult):
        region_to_box("not a region", width=160, height=120, categories=CATS)


def test_label_config_lists_the_classes_escaped_with_colours_and_keys():
    config = label_config(["circle", 'odd "one" & <two>'])
    assert config.startswith('<View><Header value="$hitl_reason"')
    assert '<Image name="image" value="$image"/>' in config
    assert '<RectangleLabels name="label" toName="image">' in config
    assert '<Label value="circle" background="#e6194b" hotkey="1"/>' in config
    assert 'background="#3cb44b" hotkey="2"' in config
    assert '<RectangleLabels name="model" toName="image"' in config
    assert 'perRegion="true" displayMode="region-list"' in config
    assert config_labels(config) == {"circle", 'odd "one" & <two>'}
    with pytest.raises(ValueError):
        label_config([])


def test_keys_and_urls():
    assert hitl_key("d", "scheduled__2026-01-01T00:00:00+00:00", 5) == \
        "d|scheduled__2026-01-01T00:00:00+00:00|5"
    assert image_url("a b/c#d.png") == "/data/local-files/?d=images/a%20b/c%23d.png"
    # A Label Studio on another host reads them from the connection's image_url_prefix.
    assert image_url("a b/c#d.png", "https://files.example.com/hitl/images/") == \
        "https://files.example.com/hitl/images/a%20b/c%23d.png"
    assert image_url("x.png", None) == image_url("x.png", "")
