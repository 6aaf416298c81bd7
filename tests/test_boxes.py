"""The one IoU: the scalar form (merge, synth) and the matrix form (scoring) agree."""

from __future__ import annotations

import random

import pytest

from hitl_plugin.boxes import iou, iou_matrix


def test_iou_matrix_values():
    a = [[0, 0, 10, 10], [20, 20, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 10, 10], [100, 100, 1, 1]]
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    assert m[0, 0] == pytest.approx(1.0)
    assert m[0, 1] == pytest.approx(50 / 150)
    assert m[0, 2] == 0 and m[1, 0] == 0
    assert iou_matrix([], b).shape == (0, 3)


def test_scalar_and_matrix_agree_on_random_boxes():
    rng = random.Random(3)
    boxes = [[rng.uniform(0, 50), rng.uniform(0, 50), rng.uniform(0, 30), rng.uniform(0, 30)]
             for _ in range(40)]
    boxes.append([5.0, 5.0, 0.0, 0.0])  # empty
    m = iou_matrix(boxes, boxes)
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes):
            assert iou(a, b) == pytest.approx(float(m[i, j]), abs=1e-12)
    assert iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0  # touching edges do not overlap
