"""COCO detection files: validation, and our extra fields (provenance, weights, splits).

Our additions are extra keys that pycocotools ignores:

- image ``weight`` (float, default 1.0): how often training samples the image;
- image ``hitl_split``: ``train`` (labeled) or ``pool`` (not labeled yet);
- annotation ``source``: ``original``, ``model`` or ``human``; a human one also carries
  ``round`` (int), ``annotator`` (str) and ``time`` (ISO 8601);
- top level ``hitl_history``: the boxes a correction replaced, so none is ever lost.

COCO's own fields are kept as they are: ``info``, ``licenses``, every image field, and each
annotation's ``segmentation``. An annotation with ``iscrowd: 1`` (one region around many
objects) stays in the dataset but is no box to train on, to score or to edit (see the YOLO
export, :mod:`hitl_plugin.model.score`, :mod:`hitl_plugin.labeling.tasks` and the merge).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from hitl_plugin.exceptions import CocoError

SOURCES = ("original", "model", "human")
SPLITS = ("train", "pool")
MAX_SHOWN = 50
#: Boxes may overhang the image by this many pixels (rounding in exporters).
EDGE_TOLERANCE = 1.0


class _Problems:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.shown: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.shown) < self.cap:
            self.shown.append(message)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_ids(items: Iterable[Any], what: str, problems: _Problems) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.add(f"{what}[{index}]: not an object")
            continue
        ident = item.get("id")
        if not isinstance(ident, int) or isinstance(ident, bool):
            problems.add(f"{what}[{index}]: id must be an integer, got {ident!r}")
        elif ident in seen:
            problems.add(f"{what}[{index}]: duplicate id {ident}")
        else:
            seen[ident] = item
    return seen


def validate_coco(
    data: Any, *, source: str = "<coco>", cap: int = MAX_SHOWN, require_annotations: bool = True
) -> None:
    """Check a COCO detection dict; raise :class:`CocoError` listing the problems.

    :param data: the parsed file.
    :param source: name used in messages (usually the file path).
    :param cap: at most this many problems are listed; all are counted.
    :param require_annotations: whether the ``annotations`` key must be present.
    """
    problems = _Problems(cap)
    if not isinstance(data, dict):
        raise CocoError(source, ["top level must be an object"], 1)
    for key in ("images", "categories") + (("annotations",) if require_annotations else ()):
        if not isinstance(data.get(key), list):
            problems.add(f"missing or non-list '{key}'")
    if problems.total:
        raise CocoError(source, problems.shown, problems.total)

    images = _check_ids(data["images"], "images", problems)
    categories = _check_ids(data["categories"], "categories", problems)
    for ident, cat in categories.items():
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            problems.add(f"category {ident}: name must be a non-empty string")
    for ident, img in images.items():
        w, h = img.get("width"), img.get("height")
        if not (_finite_number(w) and _finite_number(h) and w > 0 and h > 0):
            problems.add(f"image {ident}: width/height must be positive numbers, got {w!r}x{h!r}")
        name = img.get("file_name")
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
            problems.add(f"image {ident}: file_name must be a relative path, got {name!r}")
        weight = img.get("weight", 1.0)
        if not (_finite_number(weight) and weight > 0):
            problems.add(f"image {ident}: weight must be a positive number, got {weight!r}")
        if img.get("hitl_split", "train") not in SPLITS:
            problems.add(f"image {ident}: hitl_split must be one of {SPLITS}")

    annotations = _check_ids(data.get("annotations") or [], "annotations", problems)
    for ident, ann in annotations.items():
        where = f"annotation {ident}"
        image = images.get(ann.get("image_id"))
        if image is None:
            problems.add(f"{where}: image_id {ann.get('image_id')!r} does not exist")
        if ann.get("category_id") not in categories:
            problems.add(f"{where}: category_id {ann.get('category_id')!r} does not exist")
        if ann.get("source", "original") not in SOURCES:
            problems.add(f"{where}: source must be one of {SOURCES}, got {ann.get('source')!r}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_finite_number, bbox))):
            problems.add(f"{where}: bbox must be 4 finite numbers, got {bbox!r}")
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problems.add(f"{where}: bbox width and height must be positive, got {w}x{h}")
            continue
        if image is not None and _finite_number(image.get("width")):
            iw, ih = image["width"], image.get("height", 0)
            tol = EDGE_TOLERANCE
            if x < -tol or y < -tol or x + w > iw + tol or y + h > ih + tol:
                problems.add(
                    f"{where}: bbox {bbox} lies outside image {image['id']} ({iw}x{ih})"
                )
    if problems.total:
        raise CocoError(source, problems.shown, problems.total)


def read_coco(path: str | os.PathLike[str], *, require_annotations: bool = True) -> dict:
    """Read and validate a COCO file; errors name the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise CocoError(path, [f"cannot read: {exc.strerror}"], 1) from None
    except json.JSONDecodeError as exc:
        raise CocoError(path, [f"invalid JSON: {exc.msg} at line {exc.lineno}"], 1) from None
    validate_coco(data, source=path, require_annotations=require_annotations)
    return data


def class_names(coco: dict) -> list[str]:
    """Category names ordered by category id (the YOLO class order)."""
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    """Group annotations by image id (every image present, possibly with an empty list)."""
    grouped: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco.get("annotations", []):
        grouped.setdefault(ann["image_id"], []).append(ann)
    return grouped
