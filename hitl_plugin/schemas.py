"""Files that pass between the steps of a round (the contracts between the parts).

All live under ``rounds/<dag_id>/<run_id>/`` as JSON. XCom carries only their paths
and small counts. Boxes are COCO pixel boxes ``[x, y, width, height]``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SuspicionKind = Literal["missing", "spurious", "class_swap", "bad_box"]
ReasonKind = Literal["label_error", "uncertainty", "audit", "quota"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Category(_Model):
    id: int
    name: str


class Prediction(_Model):
    """One box predicted by the model (a pre-annotation for people)."""

    bbox: list[float] = Field(min_length=4, max_length=4)
    category_id: int
    score: float
    class_probs: list[float] | None = None


class Suspicion(_Model):
    """One suspected label error and the boxes involved."""

    kind: SuspicionKind
    score: float
    label_ann_id: int | None = None
    label_bbox: list[float] | None = None
    label_category_id: int | None = None
    pred_bbox: list[float] | None = None
    pred_category_id: int | None = None
    pred_score: float | None = None
    iou: float | None = None


class ImageScore(_Model):
    """Scores of one image (from the scoring step)."""

    image_id: int
    split: Literal["train", "pool"]
    n_labels: int = 0
    uncertainty: dict[str, float] = Field(default_factory=dict)
    label_error_score: float = 0.0
    suspicions: list[Suspicion] = Field(default_factory=list)
    predictions: list[Prediction] = Field(default_factory=list)


class SelectedSample(_Model):
    """One image chosen for people to label, with why."""

    image_id: int
    file_name: str
    width: int
    height: int
    split: Literal["train", "pool"]
    reason: ReasonKind
    score: float
    suspicions: list[Suspicion] = Field(default_factory=list)
    predictions: list[Prediction] = Field(default_factory=list)


class SelectionManifest(_Model):
    """What a round sends to the labeling service (``selection.json``)."""

    dag_id: str
    run_id: str
    dataset: str
    version: str
    model_version: str
    categories: list[Category]
    strategy: str
    budget: int
    seed: int
    items: list[SelectedSample]


class CorrectedBox(_Model):
    bbox: list[float] = Field(min_length=4, max_length=4)
    category_id: int


class Correction(_Model):
    """What a person returned for one image (already validated)."""

    image_id: int
    status: Literal["labeled", "skipped"]
    task_id: int
    annotation_id: int | None = None
    annotator: str | None = None
    time: str | None = None
    boxes: list[CorrectedBox] = Field(default_factory=list)
    #: Other annotations of the same task that lost to this one (rule: the most recent
    #: non-cancelled annotation wins), kept for the record and never merged.
    superseded: list[int] = Field(default_factory=list)


class Rejected(_Model):
    """A result from the service that was not accepted, and why."""

    task_id: int | None
    image_id: int | None
    reason: str


class Corrections(_Model):
    """The validated outcome of a round (``corrections.json``)."""

    dag_id: str
    run_id: str
    dataset: str
    version: str
    items: list[Correction]
    rejected: list[Rejected] = Field(default_factory=list)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> Path:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if isinstance(data, BaseModel):
                fh.write(data.model_dump_json(indent=indent))
            else:
                json.dump(data, fh, indent=indent)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
