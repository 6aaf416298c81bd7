"""Several people's answers to one task, merged box by box (pure functions).

The rule (:func:`consensus`), for the k answers of an overlapped task:

1. **Match** the boxes of the answers: each person's boxes join the clusters built from the
   answers before theirs, one box per person per cluster, greedily by IoU >= 0.5 with the
   cluster's median box: first within a class, then across classes (one object that people
   gave different classes). A box that matches nothing starts a cluster.
2. **Class** by majority of the cluster's members; a tie goes to the class whose people weigh
   more (their measured accuracy, when given), then to the lower category id.
3. **Coordinates**: the median, corner by corner, of the members of the winning class.
4. **Support**: a cluster drawn by fewer than half the people is dropped.

**Agreement** of a task (:func:`agreement`) is the mean, over pairs of answers, of their box
F1 (:func:`hitl_plugin.boxes.box_f1`: IoU >= 0.5 and the same class); two empty answers
agree fully.

Why not ``ensemble-boxes`` (weighted box fusion, MIT): it installs here (with numba and
llvmlite, ~40 MB), but it fuses within one label only, so it cannot take a class by majority;
it may fuse two boxes of one person into one cluster, so "supported by half the people" is
not countable; and its last release is from 2022. This rule is ~60 lines on the package's own
IoU.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from itertools import combinations

from hitl_plugin.boxes import MATCH_IOU, box_f1, same_object_pairs

__all__ = ["agreement", "consensus"]


def _median_box(boxes: Sequence[dict]) -> list[float]:
    x1 = statistics.median(b["bbox"][0] for b in boxes)
    y1 = statistics.median(b["bbox"][1] for b in boxes)
    x2 = statistics.median(b["bbox"][0] + b["bbox"][2] for b in boxes)
    y2 = statistics.median(b["bbox"][1] + b["bbox"][3] for b in boxes)
    return [round(x1, 3), round(y1, 3), round(max(0.0, x2 - x1), 3),
            round(max(0.0, y2 - y1), 3)]


def _cluster_class(members: list[tuple[int, dict]], weights: Sequence[float]) -> tuple[int, bool]:
    """The cluster's class by majority (see the module docstring), and whether it was a tie."""
    votes: dict[int, list[int]] = {}
    for person, box in members:
        votes.setdefault(int(box["category_id"]), []).append(person)
    most = max(len(v) for v in votes.values())
    tied = [c for c, v in votes.items() if len(v) == most]
    if len(tied) == 1:
        return tied[0], False
    return min(tied, key=lambda c: (-sum(weights[p] for p in votes[c]), c)), True


def consensus(answers: Sequence[Sequence[dict]], *, weights: Sequence[float] | None = None,
              min_iou: float = MATCH_IOU) -> dict:
    """Merge several people's answers to one image box by box.

    :param answers: one list of boxes (``bbox``, ``category_id``) per person, in a fixed
        order (the caller sorts people by name, so that the result does not depend on the
        order answers arrived in).
    :param weights: per person, the tie-break weight of their class votes (default 1 each).
    :return: ``{"boxes": [{"bbox", "category_id", "support"}], "agreement", "dropped",
        "ties"}``: ``dropped`` counts clusters below half support, ``ties`` class votes
        decided by the tie rule.
    """
    n = len(answers)
    weights = list(weights) if weights is not None else [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} answers")
    clusters: list[list[tuple[int, dict]]] = []
    for person, boxes in enumerate(answers):
        boxes = list(boxes)
        open_ids = list(range(len(clusters)))  # clusters this person has no box in yet
        reps = [{"bbox": _median_box([b for _, b in clusters[c]]),
                 "category_id": _cluster_class(clusters[c], weights)[0]} for c in open_ids]
        taken_reps: set[int] = set()
        taken_boxes: set[int] = set()
        for same_class in (True, False):
            left_reps = [i for i in range(len(reps)) if i not in taken_reps]
            left_boxes = [j for j in range(len(boxes)) if j not in taken_boxes]
            pairs = same_object_pairs([reps[i] for i in left_reps],
                                      [boxes[j] for j in left_boxes],
                                      min_iou=min_iou, same_class=same_class)
            for a, b in pairs:
                i, j = left_reps[a], left_boxes[b]
                taken_reps.add(i)
                taken_boxes.add(j)
                clusters[open_ids[i]].append((person, boxes[j]))
        clusters.extend([(person, boxes[j])] for j in range(len(boxes)) if j not in taken_boxes)
    out, dropped, ties = [], 0, 0
    for members in clusters:
        support = len({p for p, _ in members})
        if 2 * support < n:
            dropped += 1
            continue
        category, tie = _cluster_class(members, weights)
        ties += tie
        out.append({"bbox": _median_box([b for _, b in members
                                         if int(b["category_id"]) == category]),
                    "category_id": category, "support": support})
    out.sort(key=lambda b: (b["bbox"][1], b["bbox"][0], b["category_id"]))
    return {"boxes": out, "agreement": agreement(answers), "dropped": dropped, "ties": ties}


def agreement(answers: Sequence[Sequence[dict]]) -> float | None:
    """Mean pairwise box F1 of the answers; None for fewer than two answers."""
    pairs = list(combinations(answers, 2))
    if not pairs:
        return None
    return round(sum(box_f1(a, b) for a, b in pairs) / len(pairs), 4)
