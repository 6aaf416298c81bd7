"""Conversions between our samples and Label Studio tasks (pure functions).

A task carries our own key, ``hitl_key = "<dag_id>|<run_id>|<image_id>"``, plus its parts, so
that results are mapped back through OUR ids and a retried submit finds what it already sent.
Boxes: COCO pixels ``[x, y, w, h]`` on our side; Label Studio stores percent of the image,
top-left corner, with ``original_width``/``original_height``.

Nothing that comes back is trusted: :func:`region_to_box` validates a result region with
pydantic and raises :class:`InvalidResult` with a short reason.
"""

from __future__ import annotations

import math
from typing import Any, Literal
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hitl_plugin.exceptions import InvalidResult
from hitl_plugin.schemas import CorrectedBox, SelectedSample

#: The control and object tag names of our label config.
FROM_NAME = "label"
TO_NAME = "image"
#: How far (percent of the image side) a box may stick out and still be accepted (then clipped).
TOLERANCE_PCT = 0.5


def hitl_key(dag_id: str, run_id: str, image_id: int) -> str:
    """The idempotency key of one sample in one round."""
    return f"{dag_id}|{run_id}|{int(image_id)}"


def label_config(class_names: list[str] | tuple[str, ...]) -> str:
    """The project's label config: one image, rectangle labels for each class."""
    if not class_names:
        raise ValueError("label_config needs at least one class name")
    labels = "".join(f"<Label value={quoteattr(str(name))}/>" for name in class_names)
    return (f'<View><Image name="{TO_NAME}" value="$image"/>'
            f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}'
            f"</RectangleLabels></View>")


def image_url(file_name: str) -> str:
    """Local-files URL of an image stored under ``<storage root>/images``."""
    return "/data/local-files/?d=" + quote(f"images/{file_name}", safe="/")


def reason_text(sample: SelectedSample, names: dict[int, str]) -> str:
    """A short text telling the annotator why this image was chosen."""
    if sample.reason == "label_error" and sample.suspicions:
        parts = []
        for s in sample.suspicions[:3]:
            cls = s.label_category_id if s.label_category_id is not None else s.pred_category_id
            what = names.get(cls, "?") if cls is not None else "?"
            if s.kind == "class_swap" and s.pred_category_id is not None:
                what = f"{names.get(s.label_category_id, '?')}->{names.get(s.pred_category_id)}"
            parts.append(f"{s.kind.replace('_', ' ')} ({what}, {s.score:.2f})")
        more = f" +{len(sample.suspicions) - 3} more" if len(sample.suspicions) > 3 else ""
        return f"suspected label errors: {', '.join(parts)}{more}"
    if sample.reason == "uncertainty":
        return f"model uncertain (score {sample.score:.3f})"
    if sample.reason == "audit":
        return "random audit sample"
    if sample.reason == "quota":
        return f"class quota (score {sample.score:.3f})"
    return f"{sample.reason} (score {sample.score:.3f})"


def box_to_region(bbox: list[float], label: str, width: int, height: int, *,
                  score: float | None = None, region_id: str | None = None) -> dict:
    """A COCO pixel box as a RectangleLabels region (percent, top-left)."""
    x, y, w, h = (float(v) for v in bbox)
    region: dict[str, Any] = {
        "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"x": 100.0 * x / width, "y": 100.0 * y / height,
                  "width": 100.0 * w / width, "height": 100.0 * h / height,
                  "rotation": 0, "rectanglelabels": [label]},
    }
    if region_id is not None:
        region["id"] = region_id
    if score is not None:
        region["score"] = float(score)
    return region


def to_task(sample: SelectedSample, *, dag_id: str, run_id: str, model_version: str,
            names: dict[int, str], batch: str | None = None) -> dict:
    """One selected sample as a Label Studio task, with the model's boxes as predictions.

    :param names: category id -> class name (the label values of the project).
    :param batch: the submit batch, ``"<start>-<stop>"`` (``data.hitl_batch``), which lets a
        retried submit find its earlier tasks with one narrow query.
    """
    result = []
    for i, pred in enumerate(sample.predictions):
        if pred.category_id not in names:
            continue  # a class the project does not know cannot be shown
        result.append(box_to_region(pred.bbox, names[pred.category_id], sample.width,
                                    sample.height, score=pred.score, region_id=f"p{i}"))
    data = {
        "image": image_url(sample.file_name),
        "hitl_key": hitl_key(dag_id, run_id, sample.image_id),
        "hitl_dag_id": dag_id,
        "hitl_run_id": run_id,
        "hitl_image_id": int(sample.image_id),
        "hitl_reason": reason_text(sample, names),
        "hitl_split": sample.split,
    }
    if batch is not None:
        data["hitl_batch"] = batch
    task: dict[str, Any] = {"data": data}
    task["predictions"] = [{"model_version": model_version, "score": float(sample.score),
                            "result": result}]
    return task


class _Value(BaseModel):
    model_config = ConfigDict(extra="ignore")

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    rectanglelabels: list[str] = Field(min_length=1, max_length=1)

    @field_validator("x", "y", "width", "height", "rotation")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("not a finite number")
        return v


class _Region(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["rectanglelabels"]
    from_name: str = FROM_NAME
    value: _Value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def region_to_box(region: Any, *, width: int, height: int, categories: dict[str, int],
                  tolerance_pct: float = TOLERANCE_PCT) -> CorrectedBox:
    """Validate one result region and convert it to a COCO pixel box.

    The image size is OURS (from the selection), never the service's. A box may stick out of
    the image by ``tolerance_pct`` percent of a side (rounding in the UI); it is then clipped.

    :param categories: class name -> our category id.
    :raises InvalidResult: unknown class, not finite, rotated, outside the image, empty.
    """
    if not isinstance(region, dict):
        raise InvalidResult(f"region is a {type(region).__name__}, not an object")
    if region.get("type") != "rectanglelabels":
        raise InvalidResult(f"unsupported region type {str(region.get('type'))[:40]!r}")
    try:
        parsed = _Region.model_validate(region)
    except ValidationError as exc:
        raise InvalidResult(f"malformed region: {_first_error(exc)}") from None
    v = parsed.value
    label = v.rectanglelabels[0]
    if label not in categories:
        raise InvalidResult(f"unknown class {label[:40]!r}")
    if abs(v.rotation) > 1e-6:
        raise InvalidResult(f"rotated box ({v.rotation:g} degrees) cannot be a COCO box")
    if v.width <= 0 or v.height <= 0:
        raise InvalidResult(f"box has no area ({v.width:g}% x {v.height:g}%)")
    tol = tolerance_pct
    if v.x < -tol or v.y < -tol or v.x + v.width > 100 + tol or v.y + v.height > 100 + tol:
        raise InvalidResult(
            f"box outside the image (x={v.x:.2f}%, y={v.y:.2f}%, w={v.width:.2f}%, "
            f"h={v.height:.2f}%)")
    x0, y0 = max(0.0, v.x), max(0.0, v.y)
    x1, y1 = min(100.0, v.x + v.width), min(100.0, v.y + v.height)
    bbox = [x0 * width / 100.0, y0 * height / 100.0, (x1 - x0) * width / 100.0,
            (y1 - y0) * height / 100.0]
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise InvalidResult("box has no area inside the image")
    return CorrectedBox(bbox=[round(c, 3) for c in bbox], category_id=categories[label])
