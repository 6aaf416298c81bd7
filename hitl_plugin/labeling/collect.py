"""Read a round's finished tasks back from Label Studio as validated corrections.

Nothing the service returns is trusted:

- a task is mapped back through OUR key: its ``hitl_image_id`` must be one of the selection's
  image ids and its ``hitl_key`` must equal the key we built; otherwise it is rejected;
- boxes are converted with the image size from OUR selection, and every region is validated
  (known class, finite numbers, inside the image within a small tolerance, positive size);
  an annotation with any invalid region is rejected as a whole, with a reason per region, so
  that a half-valid answer never deletes a label;
- nothing returned is used as a file path.

Rule for several annotations on one task: the most recent non-cancelled annotation wins
(latest ``updated_at``, then ``created_at``, then the highest id); the others are recorded in
``Correction.superseded``. A task whose annotations are all cancelled is ``skipped`` (the
original labels are kept). A task with no annotation yet is not in the result (still pending).
If the winning annotation is invalid, the task is rejected; an older one is not used instead.

Tasks answered by several people (``annotators > 1`` in the selection: overlap and gold) are
read per person: each person's latest non-cancelled answer counts once (an invalid one is
left out, with a note). A gold task's answers score the people
(:mod:`hitl_plugin.labeling.annotators`) and are never merged. An overlapped task's answers
are merged box by box (:mod:`hitl_plugin.labeling.consensus`); a task whose agreement is below
``labeling.min_agreement`` is held, not merged. A person whose gold accuracy is below
``labeling.min_accuracy`` has their answers outside consensus held. Held answers are recorded
in ``held``; the per-person table goes to ``annotators``.
"""

from __future__ import annotations

import logging
from typing import Any

from hitl_plugin.boxes import answer_kind
from hitl_plugin.exceptions import InvalidResult, LabelStudioError
from hitl_plugin.labeling.client import LabelStudioClient, run_filters
from hitl_plugin.labeling.tasks import ISSUES_NAME, MODEL_NAME, hitl_key, region_to_box
from hitl_plugin.schemas import (
    ROUND_FILE_SCHEMA,
    Answer,
    CorrectedBox,
    Correction,
    Corrections,
    GoldResult,
    GoldTruth,
    Held,
    Rejected,
    SelectedSample,
    SelectionManifest,
)

log = logging.getLogger(__name__)


def annotator_of(annotation: dict) -> str | None:
    """The annotator's e-mail (``created_username`` is ``" email, id"``) or user id."""
    name = annotation.get("created_username")
    if isinstance(name, str) and name.strip():
        email = name.split(",")[0].strip()
        if email:
            return email[:200]
    by = annotation.get("completed_by")
    if isinstance(by, dict):
        by = by.get("email") or by.get("id")
    return str(by)[:200] if by is not None else None


#: Ids of ours and Label Studio's are database keys: more digits than this is not an id.
MAX_ID_DIGITS = 18
#: More regions than this in one answer is not a labeling of one image.
MAX_REGIONS = 500
#: A box narrower or lower than this (pixels) is a stray click: dropped, with a note.
MIN_BOX_PX = 1.0
#: Texts copied from an answer into provenance are cut to this length.
MAX_TEXT = 64


def _when(annotation: dict) -> str | None:
    """The answer's time, as the service wrote it, cut to :data:`MAX_TEXT` characters."""
    value = annotation.get("updated_at") or annotation.get("created_at")
    return str(value)[:MAX_TEXT] if value else None


def _order(annotation: dict) -> tuple:
    return (str(annotation.get("updated_at") or ""), str(annotation.get("created_at") or ""),
            _as_int(annotation.get("id")) or 0)


def _as_int(value: Any) -> int | None:
    """An id as an int, or None for anything else (a bool, a float, a text, a huge number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if len(str(abs(value))) <= MAX_ID_DIGITS else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        if digits.isdigit() and digits.isascii() and len(digits) <= MAX_ID_DIGITS:
            return int(text)
    return None


def started_from(sample: SelectedSample) -> list[dict]:
    """The boxes a person starts from: the current labels, or the model's for a pool image."""
    if sample.split == "train":
        return [{"bbox": b.bbox, "category_id": b.category_id} for b in sample.labels]
    return [{"bbox": p.bbox, "category_id": p.category_id} for p in sample.predictions]


def _checked_task(task: dict, *, dag_id: str, run_id: str,
                  samples: dict) -> tuple[int | None, int, list[dict]] | Rejected | None:
    """The task's id, OUR image id and its annotations; why the task is not ours; or None
    when nobody answered it yet."""
    task_id = _as_int(task.get("id"))
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    image_id = _as_int(data.get("hitl_image_id"))
    if image_id is None or image_id not in samples:
        return Rejected(task_id=task_id, image_id=None,
                        reason=f"task is not in this round's selection (hitl_image_id="
                        f"{str(data.get('hitl_image_id'))[:40]!r})")
    if data.get("hitl_key") != hitl_key(dag_id, run_id, image_id):
        return Rejected(task_id=task_id, image_id=image_id,
                        reason=f"hitl_key {str(data.get('hitl_key'))[:120]!r} does not match "
                        f"this round's key")
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    if not annotations:
        return None
    bad = [a.get("id") for a in annotations if _as_int(a.get("id")) is None]
    if bad:
        return Rejected(task_id=task_id, image_id=image_id,
                        reason=f"an annotation id is not an integer "
                        f"({str(bad[0])[:40]!r}): the task cannot be read safely")
    return task_id, image_id, annotations


def _boxes_of(annotation: dict, sample: SelectedSample,
              categories: dict[str, int]) -> tuple[list[CorrectedBox], list[str]] | str:
    """The validated boxes of one annotation and the regions dropped, or why it is invalid."""
    result = annotation.get("result")
    if not isinstance(result, list):
        return f"annotation {annotation.get('id')}: result is not a list"
    if len(result) > MAX_REGIONS:
        return (f"annotation {annotation.get('id')}: {len(result)} regions, more than the "
                f"{MAX_REGIONS} an image can hold")
    boxes, problems, dropped, seen = [], [], [], set()
    for i, region in enumerate(result):
        if isinstance(region, dict) and region.get("from_name") in (MODEL_NAME, ISSUES_NAME):
            continue  # the model's boxes and the suspicions: shown to people, never merged
        try:
            box = region_to_box(region, width=sample.width, height=sample.height,
                                categories=categories)
        except InvalidResult as exc:
            problems.append(f"region {i}: {exc}")
            continue
        key = (box.category_id, *box.bbox)
        if min(box.bbox[2], box.bbox[3]) < MIN_BOX_PX:  # a stray click, not an object
            dropped.append(f"region {i}: a {box.bbox[2]:g} x {box.bbox[3]:g} px box, below "
                           f"{MIN_BOX_PX:g} px: dropped")
        elif key in seen:
            dropped.append(f"region {i}: an exact duplicate of an earlier box: dropped")
        else:
            seen.add(key)
            boxes.append(box)
    if problems:
        return f"annotation {annotation.get('id')}: " + "; ".join(problems[:5])
    return boxes, dropped


def _lead_time(annotation: dict) -> float | None:
    value = annotation.get("lead_time")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < 1e7 else None


def _skipped(image_id: int, task_id: int | None, annotations: list[dict]) -> Correction:
    """A task whose every annotation is cancelled: skipped, the labels kept."""
    last = max(annotations, key=_order)
    return Correction(image_id=image_id, status="skipped", task_id=task_id or 0,
                      annotation_id=_as_int(last.get("id")), annotator=annotator_of(last),
                      time=_when(last))


def task_to_correction(task: dict, *, dag_id: str, run_id: str, samples: dict,
                       categories: dict[str, int],
                       empty_answer: str = "reject") -> Correction | Rejected | None:
    """Turn one task (with its annotations) into a correction, a rejection, or ``None``.

    :param samples: our image id -> :class:`~hitl_plugin.schemas.SelectedSample`.
    :param categories: class name -> our category id.
    :param empty_answer: ``reject`` or ``no_objects``: what a submission without a box
        means for an image that had labels (``labeling.empty_answer``).
    :return: ``None`` when the task has no annotation yet.
    """
    checked = _checked_task(task, dag_id=dag_id, run_id=run_id, samples=samples)
    if checked is None or isinstance(checked, Rejected):
        return checked
    task_id, image_id, annotations = checked
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return _skipped(image_id, task_id, annotations)
    chosen = max(done, key=_order)
    others = [i for i in (_as_int(a.get("id")) for a in annotations if a is not chosen)
              if i is not None]
    sample = samples[image_id]
    read = _boxes_of(chosen, sample, categories)
    if isinstance(read, str):
        return Rejected(task_id=task_id, image_id=image_id, reason=read)
    boxes, dropped = read
    return _as_correction(sample, boxes, task_id=task_id or 0, empty_answer=empty_answer,
                          annotation_id=_as_int(chosen.get("id")),
                          annotator=annotator_of(chosen), time=_when(chosen),
                          superseded=others, dropped=dropped, lead_time=_lead_time(chosen))


def _as_correction(sample: SelectedSample, boxes: list[CorrectedBox], *, task_id: int,
                   empty_answer: str, **fields) -> Correction | Rejected:
    """A labeled correction of ``sample`` with ``boxes``, or the empty answer's rejection."""
    answer = answer_kind(started_from(sample), [b.model_dump() for b in boxes])
    if answer == "empty" and sample.labels and empty_answer == "reject":
        what = fields.get("annotation_id") or ", ".join(fields.get("annotators") or [])
        return Rejected(task_id=task_id, image_id=sample.image_id, answer="empty",
                        reason=f"annotation {what}: empty answer for an image with "
                        f"{len(sample.labels)} label(s); they are kept (labeling.empty_answer: "
                        "reject; set no_objects to accept such answers)")
    return Correction(image_id=sample.image_id, status="labeled", answer=answer,
                      task_id=task_id, boxes=boxes, **fields)


def task_answers(task: dict, *, dag_id: str, run_id: str, samples: dict,
                 categories: dict[str, int]) -> tuple[int, int, list[Answer], list[str],
                                                      Correction | None] | Rejected | None:
    """Read a task answered by several people: each person's latest non-cancelled answer.

    :return: ``None`` when nobody answered yet; else ``(task_id, image_id, answers, notes,
        skipped)``: the valid answers sorted by person, notes on what was left out (an
        invalid answer, a person's earlier answers), and a ``skipped`` correction when
        every annotation was cancelled.
    """
    checked = _checked_task(task, dag_id=dag_id, run_id=run_id, samples=samples)
    if checked is None or isinstance(checked, Rejected):
        return checked
    task_id, image_id, annotations = checked
    sample = samples[image_id]
    latest: dict[str, dict] = {}
    notes: list[str] = []
    for a in sorted((a for a in annotations if not a.get("was_cancelled")), key=_order):
        who = annotator_of(a) or f"annotation {a.get('id')}"
        if who in latest:
            notes.append(f"annotation {latest[who].get('id')} by {who}: superseded by their "
                         f"later answer {a.get('id')}")
        latest[who] = a
    if not latest:
        return task_id or 0, image_id, [], notes, _skipped(image_id, task_id, annotations)
    answers = []
    for who in sorted(latest):
        a = latest[who]
        read = _boxes_of(a, sample, categories)
        if isinstance(read, str):
            notes.append(f"{who}: {read}: left out")
            continue
        answers.append(Answer(annotator=who, annotation_id=_as_int(a.get("id")),
                              time=_when(a), lead_time=_lead_time(a), boxes=read[0]))
    return task_id or 0, image_id, answers, notes, None


def _check_project(client: LabelStudioClient, project_id: int, dag_id: str, run_id: str,
                   expected: int) -> None:
    """Fail, rather than read "no answers", when the project is gone or is not this round's.

    A task list of a missing project reads as empty, and an empty corrections file would be
    merged as a round in which nobody answered.
    """
    try:
        client.get_project(project_id)
    except LabelStudioError as exc:
        if exc.status == 404:
            raise LabelStudioError(
                f"project {project_id} does not exist (deleted, or the round's submissions "
                "name another server): this round's answers cannot be collected",
                status=404, method=exc.method, path=exc.path) from None
        raise
    if expected and not client.count_tasks(project_id, run_filters(dag_id, run_id)):
        raise LabelStudioError(
            f"project {project_id} holds none of the {expected} tasks of round {dag_id} / "
            f"{run_id}: the wrong project, or its tasks were deleted", status=404,
            method="GET", path="/api/tasks/")


def collect_corrections(client: LabelStudioClient, *, project_id: int, dag_id: str, run_id: str,
                        selection: SelectionManifest,
                        categories: dict[str, int] | None = None,
                        empty_answer: str = "reject", min_agreement: float = 0.0,
                        min_accuracy: float | None = None) -> Corrections:
    """Read the round's tasks (paginated, filtered by run) and validate their annotations.

    :param categories: class name -> our category id (default: the selection's categories).
    :param min_agreement: ``labeling.min_agreement`` for overlapped tasks.
    :param min_accuracy: ``labeling.min_accuracy`` (None: nobody's answers are held).
    :return: the corrections; ``rejected`` lists what was not accepted and why. Tasks without
        an annotation are left out (see :func:`pending_count`).
    """
    samples = {s.image_id: s for s in selection.items}
    _check_project(client, project_id, dag_id, run_id, expected=len(samples))
    tasks = client.iter_tasks(project_id, run_filters(dag_id, run_id), fields="all")
    return read_round(tasks, dag_id=dag_id, run_id=run_id, selection=selection,
                      categories=categories, empty_answer=empty_answer,
                      min_agreement=min_agreement, min_accuracy=min_accuracy)


def read_round(tasks, *, dag_id: str, run_id: str, selection: SelectionManifest,
               categories: dict[str, int] | None = None, empty_answer: str = "reject",
               min_agreement: float = 0.0, min_accuracy: float | None = None) -> Corrections:
    """The round's corrections from its tasks (with their annotations), as
    :func:`collect_corrections` reads them from Label Studio (see the module docstring)."""
    from hitl_plugin.labeling.annotators import Tally, table
    from hitl_plugin.labeling.consensus import consensus

    categories = categories or {c.name: c.id for c in selection.categories}
    samples = {s.image_id: s for s in selection.items}
    gold: dict[int, GoldTruth] = {g.image_id: g for g in selection.gold}
    by_image: dict[int, Correction] = {}
    rejected: list[Rejected] = []
    gold_results: list[GoldResult] = []
    overlapped: list[tuple[int, int, list[Answer], list[str]]] = []
    tallies: dict[str, Tally] = {}

    def keep(outcome: Correction) -> None:
        previous = by_image.get(outcome.image_id)
        if previous is None:
            by_image[outcome.image_id] = outcome
            return
        # Two tasks for one key (a service-side duplicate): the lower task id wins.
        first, second = sorted((previous, outcome), key=lambda c: c.task_id)
        by_image[outcome.image_id] = first
        rejected.append(Rejected(task_id=second.task_id, image_id=second.image_id,
                                 reason=f"duplicate task for this image; task "
                                 f"{first.task_id} is used"))

    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        image_id = _as_int((data or {}).get("hitl_image_id")) if isinstance(data, dict) else None
        sample = samples.get(image_id) if image_id is not None else None
        if sample is None or (sample.annotators <= 1 and image_id not in gold):
            outcome = task_to_correction(task, dag_id=dag_id, run_id=run_id, samples=samples,
                                         categories=categories, empty_answer=empty_answer)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
            elif outcome is not None:
                if outcome.status == "labeled" and outcome.annotator:
                    tallies.setdefault(outcome.annotator, Tally()).answered(outcome.lead_time)
                keep(outcome)
            continue
        read = task_answers(task, dag_id=dag_id, run_id=run_id, samples=samples,
                            categories=categories)
        if read is None:
            continue
        if isinstance(read, Rejected):
            rejected.append(read)
            continue
        task_id, image_id, answers, notes, skipped = read
        for a in answers:
            tallies.setdefault(a.annotator, Tally()).answered(a.lead_time)
        if image_id in gold:
            truth = [b.model_dump() for b in gold[image_id].boxes]
            for a in answers:
                tallies[a.annotator].gold([b.model_dump() for b in a.boxes], truth)
            gold_results.append(GoldResult(image_id=image_id, task_id=task_id, answers=answers))
        elif skipped is not None:
            keep(skipped)
        elif answers:
            overlapped.append((task_id, image_id, answers, notes))
        else:
            rejected.append(Rejected(task_id=task_id, image_id=image_id,
                                     reason="no valid answer: " + "; ".join(notes[:5])))

    accuracy = {name: t.accuracy for name, t in tallies.items()}
    flagged = {name for name, a in accuracy.items()
               if min_accuracy is not None and a is not None and a < min_accuracy}
    held: list[Held] = []
    for task_id, image_id, answers, notes in overlapped:
        sample = samples[image_id]
        names = [a.annotator for a in answers]
        if len(answers) == 1:  # the deadline came before the others answered: one person's
            a = answers[0]
            outcome = _as_correction(sample, a.boxes, task_id=task_id, empty_answer=empty_answer,
                                     annotation_id=a.annotation_id, annotator=a.annotator,
                                     time=a.time, lead_time=a.lead_time, dropped=notes)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
            else:
                keep(outcome)
            continue
        merged = consensus([[b.model_dump() for b in a.boxes] for a in answers],
                           weights=[accuracy.get(n) or 1.0 for n in names])
        boxes = [CorrectedBox(**b) for b in merged["boxes"]]
        for a in answers:
            tallies[a.annotator].agree([b.model_dump() for b in a.boxes], merged["boxes"])
        if merged["agreement"] is not None and merged["agreement"] < min_agreement:
            held.append(Held(image_id=image_id, task_id=task_id, kind="low_agreement",
                             reason=f"agreement {merged['agreement']:.2f} of {len(answers)} "
                             f"people is below labeling.min_agreement {min_agreement:g}: "
                             "held, not merged", annotators=names,
                             agreement=merged["agreement"], boxes=boxes))
            continue
        outcome = _as_correction(
            sample, boxes, task_id=task_id, empty_answer=empty_answer,
            annotator=f"consensus of {len(names)}: " + ", ".join(names)[:160],
            time=max((a.time or "" for a in answers), default=None) or None,
            annotators=names, agreement=merged["agreement"], answers=answers, dropped=notes)
        if isinstance(outcome, Rejected):
            rejected.append(outcome)
        else:
            keep(outcome)
    if flagged:
        for image_id, c in list(by_image.items()):
            if c.status == "labeled" and c.annotator in flagged and not c.annotators:
                del by_image[image_id]
                tallies[c.annotator].held += 1
                held.append(Held(
                    image_id=image_id, task_id=c.task_id, kind="low_accuracy",
                    reason=f"{c.annotator}'s accuracy on gold {accuracy[c.annotator]:.2f} is "
                    f"below labeling.min_accuracy {min_accuracy:g}: their answer outside "
                    "consensus is held, not merged", annotators=[c.annotator],
                    boxes=c.boxes))
    for item in rejected:
        log.warning("Rejected task %s (image %s): %s", item.task_id, item.image_id, item.reason)
    for item in held:
        log.warning("Held task %s (image %s): %s", item.task_id, item.image_id, item.reason)
    people = table(tallies, min_accuracy=min_accuracy)
    for row in people:
        log.info("Annotator %s: %s task(s), %s gold box(es), accuracy %s %s, precision %s, "
                 "agreement %s%s", row.annotator, row.tasks, row.gold_boxes, row.accuracy,
                 row.accuracy_ci95, row.precision, row.agreement,
                 " (FLAGGED: below labeling.min_accuracy)" if row.flagged else "")
    return with_auto_accepted(Corrections(
        schema_version=ROUND_FILE_SCHEMA, dag_id=dag_id, run_id=run_id,
        dataset=selection.dataset, version=selection.version,
        items=[by_image[i] for i in sorted(by_image)], rejected=rejected,
        gold=sorted(gold_results, key=lambda g: g.image_id),
        held=sorted(held, key=lambda h: h.image_id), annotators=people), selection)


def with_auto_accepted(corrections: Corrections, selection: SelectionManifest) -> Corrections:
    """Add the model's answers for the images it labeled alone, and count on each person's
    answer to a pool image the auto-accepted boxes they changed or removed."""
    from hitl_plugin.model.autoaccept import accepted_changed, auto_corrections

    if selection.auto_accept is None:
        return corrections
    threshold = selection.auto_accept.threshold
    samples = {s.image_id: s for s in selection.items}
    items = []
    for c in corrections.items:
        sample = samples.get(c.image_id)
        if c.status == "labeled" and sample is not None:
            changed = accepted_changed(sample, [b.model_dump() for b in c.boxes], threshold)
            c = c.model_copy(update={"accepted_changed": changed}) if changed else c
        items.append(c)
    answered = {c.image_id for c in items}
    model = [a for a in auto_corrections(selection.auto_accepted, selection.model_version)
             if a.image_id not in answered]
    return corrections.model_copy(update={
        "items": sorted(items + model, key=lambda c: c.image_id)})
