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
                suspicions=[{"kind": "class_swap", "score": 0.9, "label_category_id": 1,
                             "pred_category_id": 2},
                            {"kind": "missing", "score": 0.6, "pred_category_id": 3}],
                predictions=[{"bbox": [10, 20, 30, 40], "category_id": 2, "score": 0.91},
                             {"bbox": [100, 60, 50, 50], "category_id": 3, "score": 0.4},
                             {"bbox": [1, 1, 2, 2], "category_id": 99, "score": 0.3}])
    return SelectedSample.model_validate({**base, **kw})


def test_task_carries_our_key_image_url_reason_and_percent_predictions():
    task = to_task(sample(), dag_id="dag", run_id="manual__1", model_version="m7",
                   names=NAMES, batch="0-50")
    data = task["data"]
    assert data == {
        "image": "/data/local-files/?d=images/shapes/000017.png",
        "hitl_key": "dag|manual__1|17", "hitl_dag_id": "dag", "hitl_run_id": "manual__1",
        "hitl_image_id": 17, "hitl_split": "train", "hitl_batch": "0-50",
        "hitl_reason": "suspected label errors: class swap (circle->square, 0.90), "
                       "missing (triangle, 0.60)",
    }
    (pred,) = task["predictions"]
    assert pred["model_version"] == "m7" and pred["score"] == 0.8
    assert len(pred["result"]) == 2  # the box of an unknown class (99) is left out
    first = pred["result"][0]
    assert first["type"] == "rectanglelabels" and first["from_name"] == "label"
    assert first["to_name"] == "image" and first["score"] == 0.91
    assert (first["original_width"], first["original_height"]) == (160, 120)
    assert first["value"]["rectanglelabels"] == ["square"]
    assert first["value"]["x"] == pytest.approx(6.25)
    assert first["value"]["y"] == pytest.approx(100 * 20 / 120)
    assert first["value"]["width"] == pytest.approx(18.75)
    assert first["value"]["height"] == pytest.approx(100 * 40 / 120)


def test_reason_texts():
    assert reason_text(sample(reason="uncertainty", score=0.4321, suspicions=[]), NAMES) == \
        "model uncertain (score 0.432)"
    assert reason_text(sample(reason="audit", suspicions=[]), NAMES) == "random audit sample"
    many = [{"kind": "bad_box", "score": 0.5, "label_category_id": 1}] * 5
    assert reason_text(sample(suspicions=many), NAMES).endswith("+2 more")


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


def test_label_config_lists_the_classes_escaped():
    config = label_config(["circle", 'odd "one" & <two>'])
    assert config.startswith('<View><Image name="image" value="$image"/>')
    assert '<RectangleLabels name="label" toName="image">' in config
    assert config_labels(config) == {"circle", 'odd "one" & <two>'}
    with pytest.raises(ValueError):
        label_config([])


def test_keys_and_urls():
    assert hitl_key("d", "scheduled__2026-01-01T00:00:00+00:00", 5) == \
        "d|scheduled__2026-01-01T00:00:00+00:00|5"
    assert image_url("a b/c#d.png") == "/data/local-files/?d=images/a%20b/c%23d.png"
