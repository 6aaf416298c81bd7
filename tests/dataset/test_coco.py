from __future__ import annotations

import json
import math

import pytest

from hitl_plugin.dataset.coco import read_coco, validate_coco
from hitl_plugin.exceptions import CocoError


def _coco():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
        ],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 80]},
        ],
    }


def test_valid_file_passes():
    validate_coco(_coco())


def test_malformed_file_gives_the_expected_problem_list():
    coco = _coco()
    coco["images"].append({"id": 1, "file_name": "c.png", "width": 10, "height": 10})
    coco["annotations"] += [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 12, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 13, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]},
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [90, 70, 20, 20]},
        {"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
        {"id": 16, "image_id": 1, "category_id": 1, "bbox": [1, 1, math.nan, 5]},
        {"id": 17, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5]},
    ]
    with pytest.raises(CocoError) as err:
        validate_coco(coco, source="bad.json")
    assert err.value.problems == [
        "images[2]: duplicate id 1",
        "annotations[2]: duplicate id 10",
        "annotation 12: image_id 99 does not exist",
        "annotation 13: category_id 7 does not exist",
        "annotation 14: bbox [90, 70, 20, 20] lies outside image 1 (100x80)",
        "annotation 15: bbox width and height must be positive, got 0x5",
        "annotation 16: bbox must be 4 finite numbers, got [1, 1, nan, 5]",
        "annotation 17: bbox must be 4 finite numbers, got [1, 1, 5]",
    ]
    assert err.value.total == 8
    assert str(err.value).startswith("bad.json: 8 problem(s)")


def test_problem_list_is_capped_and_counted():
    coco = _coco()
    coco["annotations"] = [
        {"id": i, "image_id": 1, "category_id": 1, "bbox": [-50, 0, 10, 10]} for i in range(500)
    ]
    with pytest.raises(CocoError) as err:
        validate_coco(coco, cap=20)
    assert len(err.value.problems) == 20
    assert err.value.total == 500
    assert "... and 480 more" in str(err.value)


def test_unsafe_file_names_and_bad_provenance_are_rejected():
    coco = _coco()
    coco["images"][0]["file_name"] = "../../etc/passwd"
    coco["images"][1]["weight"] = -1
    coco["annotations"][0]["source"] = "robot"
    with pytest.raises(CocoError) as err:
        validate_coco(coco)
    text = "\n".join(err.value.problems)
    assert "file_name must be a relative path" in text
    assert "weight must be a positive number" in text
    assert "source must be one of" in text


def test_read_coco_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(CocoError, match="(?s)broken.json.*invalid JSON"):
        read_coco(bad)
    missing = tmp_path / "missing.json"
    with pytest.raises(CocoError, match="(?s)missing.json.*cannot read"):
        read_coco(missing)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_coco()))
    assert read_coco(good)["images"][0]["id"] == 1
