"""The contracts between the parts: the files a round writes, and what each step returns.

- **Files** (pydantic models) live under ``rounds/<dag_id>/<run_id>/`` as JSON, named by
  :class:`hitl_plugin.paths.RoundPaths`. Boxes are COCO pixel boxes ``[x, y, width, height]``.
- **Step results** (TypedDicts, one per step of :mod:`hitl_plugin.steps`) are small JSON:
  paths, ids and counts. They are what the operators return as XCom; each has exactly one
  shape, and the DAG passes a downstream step the one field it needs.
- **Schema versions.** Every file a later package version must still read carries
  ``schema_version``. A file without one was written by airflow-hitl 0.1.0, before versions
  were recorded (version 0); its layout is the same minus the fields added since. A file
  from a newer version than this package knows is refused with a clear error
  (:func:`check_schema`) rather than misread.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from hitl_plugin.exceptions import HitlError

#: Current schema versions of the files that outlive a package upgrade.
MANIFEST_SCHEMA = 1  # datasets/<name>/vNNNN/manifest.json
TRAIN_RESULT_SCHEMA = 1  # models/.../train_result.json and PROMOTED.json (checkpoint metadata)
#: rounds/.../selection.json and corrections.json; 2: a selection may carry ``drift`` and the
#: reason ``drift`` (what a 1-reader would refuse field by field, not as a newer file)
ROUND_FILE_SCHEMA = 2
REPORT_SCHEMA = 1  # rounds/.../report.json


class SchemaError(HitlError, ValueError):
    """A file was written by a newer airflow-hitl than the one reading it."""


def check_schema(data: dict, current: int, what: str) -> int:
    """The file's schema version (0 when it has none); refuse one newer than ``current``."""
    version = data.get("schema_version", 0) if isinstance(data, dict) else 0
    if not isinstance(version, int) or version > current:
        raise SchemaError(f"{what}: schema_version {version!r} is newer than this airflow-hitl "
                          f"reads ({current}); upgrade the package")
    return version

SuspicionKind = Literal["missing", "spurious", "class_swap", "bad_box"]
ReasonKind = Literal["label_error", "uncertainty", "audit", "quota", "drift"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Category(_Model):
    id: int
    name: str


class CorrectedBox(_Model):
    bbox: list[float] = Field(min_length=4, max_length=4)
    category_id: int
    #: the model's score, for a box the model labeled alone (``source: model``)
    score: float | None = None
    #: for a consensus box: how many of the task's people drew it
    support: int | None = None


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


class LabelBox(_Model):
    """One of the image's current labels (the starting point of a review)."""

    id: int
    bbox: list[float] = Field(min_length=4, max_length=4)
    category_id: int


class SelectedSample(_Model):
    """One image chosen for people to label, with why.

    ``labels`` are the image's current labels when it was selected: a person reviewing a
    labeled image starts from them (a pool image starts from the model's ``predictions``).
    Its crowd annotations are apart, in ``crowd``.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    split: Literal["train", "pool"]
    reason: ReasonKind
    score: float
    suspicions: list[Suspicion] = Field(default_factory=list)
    predictions: list[Prediction] = Field(default_factory=list)
    labels: list[LabelBox] = Field(default_factory=list)
    #: the image's crowd regions (``iscrowd: 1``): shown read-only, never edited or merged
    crowd: list[LabelBox] = Field(default_factory=list)
    #: people who answer this task (``labeling.annotators_per_task`` when overlapped, else 1)
    annotators: int = 1


class GoldTruth(_Model):
    """A gold task of the round: the image's true boxes and the errors planted in its
    pre-fill. Kept on our side only; the task itself looks like any other."""

    image_id: int
    source: Literal["config", "consensus"]
    boxes: list[CorrectedBox]
    #: what was planted in the pre-fill (``kind`` and the boxes involved), for the record
    planted: list[dict] = Field(default_factory=list)


class AutoAcceptance(_Model):
    """How the round's model boxes were auto-accepted (``selection.auto_accept``).

    ``threshold``: a model box with at least this score is accepted without a person;
    ``source``: ``config`` (``selection.auto_accept_threshold``) or ``calibrated`` (the
    lowest score at which the model's boxes on the held-out set reach ``target_precision``);
    ``held_out_precision``/``held_out_boxes``: what the calibration measured there.
    """

    threshold: float | None
    source: Literal["config", "calibrated"]
    target_precision: float | None = None
    held_out_precision: float | None = None
    held_out_boxes: int | None = None
    model_version: str | None = None


class AutoAccepted(_Model):
    """A pool image whose every model box was accepted: labeled by the model, no person."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: list[Prediction]


class DriftApplied(_Model):
    """What the drift step changed in the round's selection (``selection.json``)."""

    detected: bool
    #: the drift step's report (``drift.json``)
    report: str
    #: the budget without drift, and the one used
    base_budget: int
    budget: int
    #: images reserved for the pool images farthest from the held-out set (reason ``drift``)
    reserved: int


class SelectionManifest(_Model):
    """What a round sends to the labeling service (``selection.json``)."""

    schema_version: int = 0
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
    #: with ``selection.auto_accept``: the threshold used, and the pool images the model
    #: labels alone this round (they go to no person)
    auto_accept: AutoAcceptance | None = None
    auto_accepted: list[AutoAccepted] = Field(default_factory=list)
    #: the gold tasks mixed into the items (``labeling.gold``): scored, never merged
    gold: list[GoldTruth] = Field(default_factory=list)
    #: with the drift step: its verdict and what it changed (None: no drift step ran)
    drift: DriftApplied | None = None


AnswerKind = Literal["confirmed", "edited", "empty"]


class Answer(_Model):
    """One person's validated answer to a task (of an overlapped or gold task)."""

    annotator: str
    annotation_id: int | None = None
    time: str | None = None
    #: seconds the person spent (Label Studio's ``lead_time``)
    lead_time: float | None = None
    boxes: list[CorrectedBox] = Field(default_factory=list)


class Correction(_Model):
    """What a person returned for one image (already validated).

    ``answer`` says what the person did with the boxes they started from: ``confirmed``
    (submitted them unchanged), ``edited`` (changed, removed or added boxes), ``empty``
    (removed every box of an image that had some; see ``labeling.empty_answer``).
    """

    image_id: int
    status: Literal["labeled", "skipped"]
    answer: AnswerKind | None = None
    task_id: int
    annotation_id: int | None = None
    annotator: str | None = None
    time: str | None = None
    #: seconds the person spent (Label Studio's ``lead_time``)
    lead_time: float | None = None
    boxes: list[CorrectedBox] = Field(default_factory=list)
    #: Other annotations of the same task that lost to this one (rule: the most recent
    #: non-cancelled annotation wins), kept for the record and never merged.
    superseded: list[int] = Field(default_factory=list)
    #: Regions of the answer left out, each with the rule and the reason (a duplicate, a
    #: stray sub-pixel box).
    dropped: list[str] = Field(default_factory=list)
    #: ``human`` (a person's answer) or ``model`` (auto-accepted boxes: pseudo-labels)
    source: Literal["human", "model"] = "human"
    #: for ``source: model``, the checkpoint that labeled the image
    model_version: str | None = None
    #: boxes the model had auto-accepted in the task that the person changed or removed
    #: (counted against ``selection.auto_accept``)
    accepted_changed: int = 0
    #: for an overlapped task: the people whose answers were merged box by box (the
    #: consensus is ``boxes``), their agreement, and each answer as it came
    annotators: list[str] = Field(default_factory=list)
    agreement: float | None = None
    answers: list[Answer] = Field(default_factory=list)


class Rejected(_Model):
    """A result from the service that was not accepted, and why."""

    task_id: int | None
    image_id: int | None
    reason: str
    #: set when the answer was valid but its kind is not accepted (an empty answer)
    answer: Literal["empty"] | None = None


class GoldResult(_Model):
    """The answers to one gold task: scored against the truth, never merged."""

    image_id: int
    task_id: int
    answers: list[Answer]


class Held(_Model):
    """A valid answer that is recorded but not merged, and why."""

    image_id: int
    task_id: int
    kind: Literal["low_agreement", "low_accuracy"]
    reason: str
    annotators: list[str] = Field(default_factory=list)
    agreement: float | None = None
    boxes: list[CorrectedBox] = Field(default_factory=list)


class AnnotatorScore(_Model):
    """One person's row of the round's per-annotator table (``annotators``).

    ``accuracy``: the share of true boxes of the gold tasks that the person's answers match
    (IoU >= 0.5, the same class), with its 95 % Wilson interval; ``precision``: the share of
    their boxes on gold tasks that match a true box; ``agreement``: box F1 of their answers
    with the consensus on overlapped non-gold tasks.
    """

    annotator: str
    tasks: int
    gold_tasks: int
    gold_boxes: int
    gold_matched: int
    accuracy: float | None
    accuracy_ci95: list[float] | None
    precision: float | None
    agreement: float | None
    agreement_tasks: int
    median_seconds: float | None
    flagged: bool
    held_answers: int = 0


class Corrections(_Model):
    """The validated outcome of a round (``corrections.json``)."""

    schema_version: int = 0
    dag_id: str
    run_id: str
    dataset: str
    version: str
    items: list[Correction]
    rejected: list[Rejected] = Field(default_factory=list)
    gold: list[GoldResult] = Field(default_factory=list)
    held: list[Held] = Field(default_factory=list)
    annotators: list[AnnotatorScore] = Field(default_factory=list)


def read_model(model: type[BaseModel], path: str | os.PathLike[str]) -> Any:
    """Read a versioned round file (``selection.json``, ``corrections.json``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    check_schema(data, ROUND_FILE_SCHEMA, str(path))
    return model.model_validate(data)


# -- what each step returns (XCom) ------------------------------------------------------------


class PrepareResult(TypedDict):
    """The dataset version the round starts from."""

    version: str
    counts: dict[str, Any]


class EvalMetrics(TypedDict, total=False):
    """COCO metrics of a checkpoint on the clean held-out set (``metrics.json``)."""

    map50_95: float
    map50: float
    per_class: dict[str, float]
    n_images: int
    n_predictions: int
    checkpoint: str
    confidences: dict[str, Any]


class Lineage(TypedDict):
    """What a checkpoint was made from (kept in its metadata)."""

    dataset: str
    version: str
    config_sha256: str
    package_version: str
    seed: int
    weights: str | None
    weights_source: str


class TrainResult(TypedDict):
    """One training of the round and its evaluation (``train_result.json`` + metrics)."""

    schema_version: int
    checkpoint: str
    last: str
    model_dir: str
    version: str
    epochs: int
    epochs_recorded: int
    resumed_from_epoch: int | None
    weights_source: str
    weighted_images: int
    data_yaml: str
    seconds: float
    device: str
    lineage: Lineage
    train_metrics: dict[str, float | None]
    metrics: EvalMetrics


class GateResult(TypedDict):
    """The promotion decision; ``checkpoint`` is the one to use from now on."""

    promoted: bool
    #: None only when the round ended at the gate with nothing promoted ever
    checkpoint: str | None
    model_version: str | None
    metrics: EvalMetrics
    candidate: float | None
    current: float | None
    reason: str
    #: set when the round ended at the gate: ``checkpoint rejected by <who>``
    ended: NotRequired[str | None]
    #: with ``gate.require_approval``: ``{"approved", "by", "timed_out", "at"}``
    approval: NotRequired[dict]


class ScoreResult(TypedDict):
    scores: str
    n_images: int
    version: str
    seconds: float
    #: with ``selection.out_of_sample_folds``: labeled images per fold, training seconds
    out_of_sample: NotRequired[dict]
    #: with ``drift.enabled``: the drift step's inputs from this pass (``drift_inputs.npz``)
    drift_inputs: NotRequired[str]


class DriftResult(TypedDict):
    """The drift step's result: its report and what it asks of the selection."""

    drift: str
    verdict: str
    detected: bool
    #: per signal: its p-value (None: not tested)
    p_values: dict[str, float | None]


class Batch(TypedDict):
    """The fan-out unit: items ``[start, stop)`` of the selection."""

    selection: str
    start: int
    stop: int


class SelectResult(TypedDict):
    selection: str
    n_selected: int
    by_reason: dict[str, int]
    batches: list[Batch]


class SubmitResult(TypedDict):
    project_id: int
    submitted: int
    already_present: int
    batch: list[int]
    duplicates: int
    overlapped: int
    submission: str


class WaitResult(TypedDict):
    project_id: int
    total: int
    completed: int
    annotated: int
    skipped: int
    fraction: float
    complete: bool
    deadline: str


class CollectResult(TypedDict):
    corrections: str
    labeled: int
    skipped: int
    rejected: int
    pending: int
    #: answers recorded but not merged (low agreement, a person below min_accuracy)
    held: int
    #: gold tasks answered (they score people and are never merged)
    gold: int


class MergeResult(TypedDict):
    version: str
    parent: str
    round: int
    images_corrected: int
    pool_labeled: int
    skipped: int
    conflicts: int
    rejected: int
    report: str


class ReportResult(TypedDict):
    report: str
    plot: str


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
