"""Box overlap: the one IoU of the package, and the one rule for "what did a person change".

Boxes are COCO ``[x, y, width, height]``. :func:`iou` compares two boxes in plain Python
(the merge calls it per box pair while it streams a dataset, where building arrays would
cost more than it saves); :func:`iou_matrix` compares every box of one set with every box of
another (scoring); :func:`compare` matches the boxes a person started from with the boxes
they returned (collect and merge); :func:`same_object_pairs` pairs two answers box by box
(consensus, and scoring people against the truth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes; 0.0 when they do not overlap or both are empty."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: Any, b: Any) -> Any:
    """IoU between every box of ``a`` (N, 4) and ``b`` (M, 4), as an (N, M) numpy array."""
    import numpy as np

    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ax1, ay1, aw, ah = a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4]
    bx1, by1, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    iw = np.clip(np.minimum(ax1 + aw, bx1 + bw) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay1 + ah, by1 + bh) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


#: Matched boxes whose corners moved by at most this many pixels count as unchanged
#: (Label Studio stores percentages: a box that round-trips comes back off by a fraction).
UNCHANGED_PX = 1.0
#: Old and new boxes overlapping at least this much are the same object (class-agnostic).
MATCH_IOU = 0.5
KINDS = ("missing", "spurious", "class_swap", "bad_box")


def _corners(b: Sequence[float]) -> tuple[float, float, float, float]:
    return b[0], b[1], b[0] + b[2], b[1] + b[3]


def compare(old: Sequence[dict], new: Sequence[dict]) -> dict:
    """Match old and new boxes (``bbox``, ``category_id``) greedily by IoU, and say what changed.

    :return: ``{"counts": {"missing", "spurious", "class_swap", "bad_box", "unchanged"},
        "unchanged": {new index: old index}}``. ``missing``: a new box that matches no old
        box (an added box); ``spurious``: an old box that matches no new box (removed);
        ``class_swap``: a matched box whose class changed; ``bad_box``: a matched box of the
        same class that moved by more than :data:`UNCHANGED_PX`; ``unchanged``: the rest.
    """
    pairs = same_object_pairs(old, new, same_class=False)
    unchanged: dict[int, int] = {}
    counts = dict.fromkeys((*KINDS, "unchanged"), 0)
    for i, j in pairs:
        o, n = old[i], new[j]
        if o["category_id"] != n["category_id"]:
            counts["class_swap"] += 1
        elif max(abs(p - q) for p, q in zip(_corners(o["bbox"]), _corners(n["bbox"]))) > (
            UNCHANGED_PX
        ):
            counts["bad_box"] += 1
        else:
            counts["unchanged"] += 1
            unchanged[j] = i
    counts["missing"] = len(new) - len(pairs)
    counts["spurious"] = len(old) - len(pairs)
    return {"counts": counts, "unchanged": unchanged}


def same_object_pairs(a: Sequence[dict], b: Sequence[dict], *, min_iou: float = MATCH_IOU,
                      same_class: bool = True) -> list[tuple[int, int]]:
    """Pair the boxes of ``a`` and ``b`` one to one, greedily by IoU (highest first), as
    COCOeval matches detections: a pair needs IoU >= ``min_iou`` and, with ``same_class``,
    the same ``category_id``. Ties go to the lower indices."""
    pairs = sorted(((iou(x["bbox"], y["bbox"]), i, j) for i, x in enumerate(a)
                    for j, y in enumerate(b)
                    if not same_class or x["category_id"] == y["category_id"]),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    out = []
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        out.append((i, j))
    return out


def box_f1(a: Sequence[dict], b: Sequence[dict], *, min_iou: float = MATCH_IOU) -> float:
    """How well two answers agree: 2 x matched pairs / (boxes of both); 1.0 when both are
    empty."""
    if not a and not b:
        return 1.0
    return 2.0 * len(same_object_pairs(a, b, min_iou=min_iou)) / (len(a) + len(b))


def answer_kind(started: Sequence[dict], returned: Sequence[dict]) -> str:
    """``confirmed`` (returned unchanged), ``empty`` (every box removed) or ``edited``."""
    if started and not returned:
        return "empty"
    result = compare(started, returned)
    return "confirmed" if result["counts"]["unchanged"] == len(started) == len(returned) \
        else "edited"
