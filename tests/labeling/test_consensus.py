"""Consensus of several people's answers, and scoring people on gold (pure functions)."""

from __future__ import annotations

import random

import pytest

from hitl_plugin.labeling.annotators import Tally, table, wilson
from hitl_plugin.labeling.consensus import agreement, consensus
from hitl_plugin.labeling.gold import plant_errors
from hitl_plugin.schemas import CorrectedBox

A = {"bbox": [10.0, 10.0, 20.0, 20.0], "category_id": 1}
B = {"bbox": [60.0, 60.0, 15.0, 15.0], "category_id": 2}


def moved(box: dict, dx: float, category_id: int | None = None) -> dict:
    x, y, w, h = box["bbox"]
    return {"bbox": [x + dx, y, w, h],
            "category_id": box["category_id"] if category_id is None else category_id}


def test_three_agreeing_people_give_the_median_box_with_full_support():
    out = consensus([[A, B], [moved(A, 1), B], [moved(A, 2), B]])
    assert [b["support"] for b in out["boxes"]] == [3, 3]
    assert out["boxes"][0]["bbox"] == [11.0, 10.0, 20.0, 20.0]  # the median, corner by corner
    assert out["agreement"] == 1.0 and out["dropped"] == 0


def test_one_person_disagreeing_is_outvoted_box_by_box():
    # the third person missed B, gave A another class and drew a box on nothing
    stray = {"bbox": [100.0, 5.0, 10.0, 10.0], "category_id": 1}
    out = consensus([[A, B], [A, B], [moved(A, 0, category_id=2), stray]])
    assert [(b["category_id"], b["support"]) for b in out["boxes"]] == [(1, 3), (2, 2)]
    assert out["boxes"][0]["bbox"] == A["bbox"]  # only the winning class's boxes count
    assert out["dropped"] == 1  # the stray box: 1 of 3 people
    assert out["agreement"] == pytest.approx((1.0 + 0.0 + 0.0) / 3, abs=1e-4)


def test_a_class_tie_goes_to_the_heavier_people_then_the_lower_id():
    answers = [[A], [moved(A, 0, category_id=3)]]
    assert consensus(answers)["boxes"][0]["category_id"] == 1  # equal weights: lower id
    assert consensus(answers)["ties"] == 1
    weighted = consensus(answers, weights=[0.6, 0.95])
    assert weighted["boxes"][0]["category_id"] == 3
    assert weighted["boxes"][0]["support"] == 2  # a tie is still one object drawn by both


def test_no_boxes_at_all():
    out = consensus([[], [], []])
    assert out == {"boxes": [], "agreement": 1.0, "dropped": 0, "ties": 0}
    # two people say "nothing", one draws a box: the box is dropped, the task agrees 1/3
    out = consensus([[], [], [A]])
    assert out["boxes"] == [] and out["dropped"] == 1
    assert out["agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert agreement([[A]]) is None  # one answer agrees with nobody


def test_half_support_is_kept_with_two_people():
    out = consensus([[A, B], [A]])
    assert [b["support"] for b in out["boxes"]] == [2, 1]  # 1 of 2 is not "fewer than half"


def test_the_order_of_people_does_not_change_the_boxes():
    answers = [[A, B], [moved(A, 3)], [moved(A, -2), moved(B, 1)]]
    first = consensus(answers)["boxes"]
    assert consensus(answers[::-1])["boxes"] == first


def test_wilson_interval():
    assert wilson(0, 0) is None
    lo, hi = wilson(60, 100)
    assert lo < 0.6 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    assert wilson(100, 100)[1] == 1.0


def test_accuracy_counts_true_boxes_matched_and_a_left_planted_error_costs():
    truth = [CorrectedBox(bbox=A["bbox"], category_id=1),
             CorrectedBox(bbox=B["bbox"], category_id=2)]
    rng = random.Random(3)
    found = None
    for _ in range(40):  # draw until a planted error that hides a true box (not "spurious")
        labels, planted = plant_errors(truth, [1, 2, 3], 160, 160, rng)
        if planted[0]["kind"] != "spurious":
            found = labels, planted
            break
    assert found is not None
    labels, planted = found
    prefill = [{"bbox": b, "category_id": c} for b, c in labels]
    careless, careful = Tally(), Tally()
    true_boxes = [b.model_dump() for b in truth]
    careless.gold(prefill, true_boxes)  # accepts the pre-fill as it is
    careful.gold(true_boxes, true_boxes)
    assert careless.accuracy == 0.5, planted  # one of two true boxes is wrong in the pre-fill
    assert careful.accuracy == 1.0
    rows = table({"careless": careless, "careful": careful}, min_accuracy=0.8)
    assert [(r.annotator, r.flagged) for r in rows] == [("careful", False), ("careless", True)]
    assert rows[1].gold_boxes == 2 and rows[1].gold_matched == 1


def test_a_planted_spurious_box_costs_precision_not_accuracy():
    truth = [CorrectedBox(bbox=A["bbox"], category_id=1)]
    rng = random.Random(0)
    while True:
        labels, planted = plant_errors(truth, [1], 160, 160, rng)
        if planted[0]["kind"] == "spurious":
            break
    t = Tally()
    t.gold([{"bbox": b, "category_id": c} for b, c in labels], [A])
    row = table({"p": t}, min_accuracy=None)[0]
    assert row.accuracy == 1.0 and row.precision == 0.5 and row.flagged is False


def test_planted_errors_are_real_errors():
    truth = [CorrectedBox(bbox=[20.0 * i, 20.0, 15.0, 15.0], category_id=1 + i % 2)
             for i in range(1, 5)]
    kinds = set()
    for seed in range(60):
        labels, planted = plant_errors(truth, [1, 2], 160, 160, random.Random(seed),
                                       n_errors=2)
        t = Tally()
        t.gold([{"bbox": b, "category_id": c} for b, c in labels],
               [b.model_dump() for b in truth])
        kinds.update(p["kind"] for p in planted)
        hidden = sum(1 for p in planted if p["kind"] != "spurious")
        assert t.gold_matched == len(truth) - hidden, (seed, planted)
    assert kinds == {"missing", "class_swap", "bad_box", "spurious"}
