"""Box overlap: the one IoU of the package. Boxes are COCO ``[x, y, width, height]``.

:func:`iou` compares two boxes in plain Python (the merge calls it per box pair while it
streams a dataset, where building arrays would cost more than it saves); :func:`iou_matrix`
compares every box of one set with every box of another (scoring).
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
