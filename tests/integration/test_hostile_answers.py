"""A corpus of hostile answers, posted to the real Label Studio and run through collect and
merge (issue 13, suite item 5): every accepted box lies inside its image with a positive
size and a known class, every rejected answer has a reason, the valid answers are merged,
and the previous version is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from tests.integration.review_round import H, W, collect_and_merge, review_round

pytestmark = pytest.mark.integration


def box(x=10.0, y=10.0, w=20.0, h=20.0, label="circle", **extra):
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "original_width": W, "original_height": H, "image_rotation": 0, **extra,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def value(**v):
    b = box()
    b["value"].update(v)
    return b


#: name -> (result, accepted?) ; a result that is not a list is sent as it is
CORPUS = {
    "negative x": ([box(x=-30)], False),
    "beyond the right edge": ([box(x=95, w=20)], False),
    "beyond the bottom": ([box(y=90, h=30)], False),
    "zero width": ([box(w=0)], False),
    "negative height": ([box(h=-5)], False),
    "nan": ([value(x=math.nan)], False),
    "infinite width": ([value(width=math.inf)], False),
    "huge number": ([value(x=1e308)], False),
    "text coordinate": ([value(x="ten")], False),
    "null coordinate": ([value(y=None)], False),
    "rotated": ([value(rotation=30)], False),
    "unknown class": ([box(label="dragon")], False),
    "two classes": ([value(rectanglelabels=["circle", "square"])], False),
    "no class": ([value(rectanglelabels=[])], False),
    "class as text": ([value(rectanglelabels="circle")], False),
    "unicode class": ([box(label="círcle")], False),
    "html class": ([box(label="<script>alert(1)</script>")], False),
    "polygon": ([{**box(), "type": "polygonlabels"}], False),
    "no type": ([{k: v for k, v in box().items() if k != "type"}], False),
    "no value": ([{k: v for k, v in box().items() if k != "value"}], False),
    "another control": ([box(from_name="other")], False),
    "another object": ([box(to_name="other")], False),
    "a string region": (["not a region"], False),
    "a number region": ([42], False),
    "too many regions": ([box(x=i % 80, w=1) for i in range(501)], False),
    "one good one bad": ([box(), box(x=-50)], False),
    "tiny overshoot (clipped)": ([box(x=90, w=10.4)], True),
    "exact duplicates (one kept)": ([box(), box()], True),
    "stray click (dropped)": ([box(), box(x=50, w=0.1, h=0.1)], True),
    "lies about the image size": ([box(original_width=99999, original_height=1)], True),
    "a normal box": ([box(x=20, y=30, w=25, h=25, label="square")], True),
    "extra fields": ([box(id="x" * 5000, meta={"text": ["a" * 10000]})], True),
}


def test_hostile_answers_are_rejected_with_a_reason_and_the_rest_merged(label_studio):
    assert len(CORPUS) >= 30
    images = tuple(range(1, len(CORPUS) + 1))
    rr = review_round(label_studio, images=images)
    base_file = rr.rnd.store.annotations_path(rr.version)
    before = hashlib.sha256(base_file.read_bytes()).hexdigest()
    names = dict(zip(images, CORPUS))
    refused = set()  # answers Label Studio itself refuses (NaN, Infinity, no value)
    for image_id, name in names.items():  # raw JSON: NaN and Infinity go out as they are
        response = label_studio.session.post(
            f"{label_studio.url}/api/tasks/{rr.tasks[image_id]}/annotations/", timeout=60,
            data=json.dumps({"result": CORPUS[name][0], "was_cancelled": False}),
            headers={"Content-Type": "application/json"})
        if response.status_code in (400, 500):  # Label Studio crashes on some (no value)
            refused.add(image_id)
            assert not CORPUS[name][1], (name, response.text)
        else:
            assert response.status_code < 300, (name, response.text)
    collected, merged, coco = collect_and_merge(label_studio, rr)

    corrections = json.loads(rr.rnd.paths.corrections.read_text())
    accepted = {c["image_id"] for c in corrections["items"]}
    rejected = {r["image_id"]: r["reason"] for r in corrections["rejected"]}
    for image_id, name in names.items():
        should = CORPUS[name][1]
        assert (image_id in accepted) is should, (name, rejected.get(image_id))
        if not should and image_id not in refused:
            assert rejected[image_id].strip(), name  # every rejection has its reason
    report = json.loads(rr.rnd.paths.merge_report.read_text())
    assert report["counts"]["rejected"] == 0  # nothing collect accepted was refused later
    assert merged["images_corrected"] == len(accepted)
    classes = {c["id"] for c in coco["categories"]}
    sizes = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        iw, ih = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and ann["category_id"] in classes, ann
        assert x >= 0 and y >= 0 and x + w <= iw + 1e-6 and y + h <= ih + 1e-6, ann
    assert hashlib.sha256(base_file.read_bytes()).hexdigest() == before
    never_stored = refused - set(rejected) - accepted
    print(f"hostile answers: {len(CORPUS)} tried, {len(never_stored)} refused by Label Studio "
          f"(never stored), {len(rejected)} rejected by collect with a reason, "
          f"{len(accepted)} accepted")
    # the images without a valid answer keep their labels, untouched
    old = rr.rnd.store.load(rr.version)
    for image_id in set(images) - accepted:
        assert [a for a in coco["annotations"] if a["image_id"] == image_id] == [
            a for a in old["annotations"] if a["image_id"] == image_id]
