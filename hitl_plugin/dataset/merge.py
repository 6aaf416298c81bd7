"""Merge validated human corrections into a new immutable dataset version.

The merge streams the parent's ``annotations.json`` line by line (the store writes one
image or annotation per line) and copies every untouched line verbatim, so a dataset the
size of COCO train2017 is merged without building a million Python dicts. Only the lines
that change are parsed: the corrected images, images whose human weight decays, and the
annotations of corrected images (kept aside as history).

Rules (also stated in :func:`merge_corrections`):

- A labeled correction replaces all boxes of its image. Each new box is an annotation with
  ``source: "human"``, ``round`` (the new version's number), ``annotator`` and ``time``,
  and a new id above every id ever used in the dataset. The replaced annotations go,
  verbatim, into ``hitl_history`` (one record per corrected image), which accumulates over
  versions: a correction is never lost.
- Latest round wins, openly: when an image's current boxes are already human (an earlier
  round), the new correction replaces them, and the conflict is recorded in the merge
  report and in the history record (``conflict: true``, previous annotator and round).
- Crowd annotations (``iscrowd: 1``) are not people's to edit: a correction of their image
  keeps them verbatim (they are shown read-only, and never compared with the answer).
- A box a person left as it was keeps its annotation (``segmentation`` included). A box
  whose class alone changed keeps its geometry and ``segmentation``; a box that moved gets
  none (the old outline no longer fits it; the replaced annotation, outline and all, is in
  ``hitl_history``).
- Skipped images keep their labels; labeled pool images join the training split.
- Human-verified images get ``weight = human_weight`` and ``hitl_verified_round``; at each
  later merge their extra weight ``weight - 1`` is multiplied by ``decay``.
- Corrections for image ids not in the base version, duplicate corrections, and
  corrections with a box that does not fit the image or names an unknown category are
  rejected (recorded), never merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hitl_plugin.boxes import KINDS, UNCHANGED_PX, compare, same_object_pairs
from hitl_plugin.dataset.coco import EDGE_TOLERANCE
from hitl_plugin.dataset.store import (
    FORMAT,
    DatasetStore,
    iter_coco_lines,
    utcnow,
    version_number,
    write_coco_lines,
)
from hitl_plugin.exceptions import DatasetError
from hitl_plugin.paths import Layout
from hitl_plugin.schemas import Correction, Corrections, write_json_atomic

log = logging.getLogger(__name__)

_SUMMARY_KEYS = ("images_corrected", "pool_labeled", "skipped", "conflicts", "rejected")
_dumps = json.dumps


def _line(obj: Any) -> str:
    return _dumps(obj, separators=(",", ":"))


# -- quick parsing of lines we wrote ----------------------------------------------------------


def _image_id(line: str) -> int:
    """The ``id`` of an image line; falls back to json.loads when the layout differs."""
    if line.startswith('{"id":'):
        end = line.find(",", 6)
        if end > 6:
            try:
                return int(line[6:end])
            except ValueError:
                pass
    return json.loads(line)["id"]


def _ann_ids(line: str) -> tuple[int, int]:
    """``(id, image_id)`` of an annotation line, parsed without json.loads when possible."""
    if line.startswith('{"id":'):
        end = line.find(",", 6)
        if end > 6 and line.startswith('"image_id":', end + 1):
            stop = line.find(",", end + 12)
            if stop > end + 12:
                try:
                    return int(line[6:end]), int(line[end + 12 : stop])
                except ValueError:
                    pass
    ann = json.loads(line)
    return ann["id"], ann["image_id"]


# -- per-image change statistics --------------------------------------------------------------


def classify_changes(old: list[dict], new: list[dict]) -> dict[str, int]:
    """Count what a correction changed (see :func:`hitl_plugin.boxes.compare`)."""
    return compare(old, new)["counts"]


def box_problem(
    bbox: list[float], category_id: int, image: dict, categories: set[int]
) -> str | None:
    """Why a corrected box cannot be merged into ``image``, or None when it fits."""
    if category_id not in categories:
        return f"category_id {category_id} does not exist"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return f"bbox {bbox} is not 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has no area"
    iw, ih = image.get("width", 0), image.get("height", 0)
    tol = EDGE_TOLERANCE
    if x < -tol or y < -tol or x + w > iw + tol or y + h > ih + tol:
        return f"bbox {bbox} lies outside the image ({iw}x{ih})"
    return None


def same_geometry(a: list[float], b: list[float]) -> bool:
    """Whether two boxes' corners are within :data:`~hitl_plugin.boxes.UNCHANGED_PX`."""
    return max(abs(p - q) for p, q in zip(
        (a[0], a[1], a[0] + a[2], a[1] + a[3]), (b[0], b[1], b[0] + b[2], b[1] + b[3]))
    ) <= UNCHANGED_PX


def decayed_weight(weight: float, decay: float) -> float:
    """The weight of an image verified in an earlier round, one merge later."""
    return round(1.0 + (weight - 1.0) * decay, 6)


# -- the merge ----------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Corrections sorted out before streaming (10k corrections are small)."""

    labeled: dict[int, Correction] = field(default_factory=dict)
    skipped: dict[int, Correction] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)


def _plan(corrections: Corrections) -> _Plan:
    plan = _Plan()
    last: dict[int, int] = {}
    for index, item in enumerate(corrections.items):
        last[item.image_id] = index
    for index, item in enumerate(corrections.items):
        if last[item.image_id] != index:
            plan.rejected.append(_rejection(item, "duplicate: a later correction of the "
                                                  "same image in this round wins"))
        elif item.status == "labeled":
            plan.labeled[item.image_id] = item
        else:
            plan.skipped[item.image_id] = item
    return plan


def _rejection(item: Correction, reason: str) -> dict:
    return {"image_id": item.image_id, "task_id": item.task_id, "reason": reason}


class _Merger:
    """State of one streaming merge; its generators run in the order the file is written."""

    def __init__(self, *, plan: _Plan, number: int, human_weight: float, decay: float,
                 now: str, categories: set[int], min_next_id: int,
                 model_weight: float = 0.5) -> None:
        self.plan = plan
        self.number = number
        self.human_weight = human_weight
        self.model_weight = model_weight
        #: pool images the model labeled alone (auto-accept) and their boxes
        self.auto_labeled = 0
        self.n_model = 0
        self.decay = decay
        self.now = now
        self.categories = categories
        self.accepted: dict[int, Correction] = {}
        self.seen_skipped: list[int] = []
        self.pool_labeled = 0
        self.decayed = 0
        self.weighted_delta = 0
        self.old_lines: dict[int, list[str]] = {}
        self.max_id = min_next_id - 1
        self.history: list[str] = []
        self.conflicts: list[dict] = []
        self.kinds = dict.fromkeys((*KINDS, "unchanged"), 0)
        self.removed_sources: dict[str, int] = {}
        self.n_new = 0
        self.n_old = 0
        #: labels a person submitted unchanged (kept as they were, stamped ``verified``)
        self.n_confirmed = 0
        #: pool images labeled this round: their new boxes are first labels, not fixes
        self.from_pool: set[int] = set()
        self.pool_boxes = 0
        #: images whose answer was the consensus of several people
        self.consensus = 0
        #: crowd annotations of corrected images, kept verbatim (people do not edit them)
        self.n_crowd_kept = 0

    def images(self, items: Iterator[str]) -> Iterator[str]:
        log.debug("publish phase: %s", "images")  # the crash tests kill in each phase
        labeled, skipped = self.plan.labeled, self.plan.skipped
        found_skipped: set[int] = set()
        found: set[int] = set()
        for line in items:
            image_id = _image_id(line)
            img = None
            if image_id in labeled:
                found.add(image_id)
                img = json.loads(line)
                corr = labeled[image_id]
                problem = next(
                    (p for b in corr.boxes
                     if (p := box_problem(b.bbox, b.category_id, img, self.categories))),
                    None,
                )
                if problem is None and corr.source == "model":
                    if img.get("hitl_split") != "pool":
                        problem = "the model may only label pool images alone"
                    else:
                        self.accepted[image_id] = corr
                        was_weighted = img.get("weight", 1.0) != 1.0
                        img["weight"] = float(self.model_weight)
                        img["hitl_split"] = "train"
                        img["hitl_auto_round"] = self.number
                        self.auto_labeled += 1
                        self.weighted_delta += (img["weight"] != 1.0) - was_weighted
                        yield _line(img)
                        continue
                if problem is None:
                    self.accepted[image_id] = corr
                    was_weighted = img.get("weight", 1.0) != 1.0
                    img["weight"] = float(self.human_weight)
                    img["hitl_verified_round"] = self.number
                    if corr.annotators:  # merged box by box from several people's answers
                        img["hitl_consensus"] = {"round": self.number,
                                                 "people": len(corr.annotators),
                                                 "agreement": corr.agreement}
                        self.consensus += 1
                    else:
                        img.pop("hitl_consensus", None)
                    if img.get("hitl_split") == "pool":
                        img["hitl_split"] = "train"
                        self.pool_labeled += 1
                        self.from_pool.add(image_id)
                    self.weighted_delta += (img["weight"] != 1.0) - was_weighted
                    yield _line(img)
                    continue
                self.plan.rejected.append(_rejection(corr, problem))
            elif image_id in skipped:
                found.add(image_id)
                found_skipped.add(image_id)
            if '"hitl_verified_round"' in line:
                img = img if img is not None else json.loads(line)
                verified = img.get("hitl_verified_round")
                if isinstance(verified, int) and verified < self.number and self.decay != 1.0:
                    was_weighted = img.get("weight", 1.0) != 1.0
                    img["weight"] = decayed_weight(img.get("weight", 1.0), self.decay)
                    self.weighted_delta += (img["weight"] != 1.0) - was_weighted
                    self.decayed += 1
                    yield _line(img)
                    continue
            yield line
        for image_id, corr in {**labeled, **skipped}.items():
            if image_id not in found:
                self.plan.rejected.append(_rejection(corr, f"image_id {image_id} is not in the "
                                                           "base version"))
        self.seen_skipped = sorted(found_skipped)

    def annotations(self, items: Iterator[str]) -> Iterator[str]:
        log.debug("publish phase: %s", "annotations")
        accepted = self.accepted
        max_id = self.max_id
        n_old = 0
        for line in items:
            ann_id, image_id = _ann_ids(line)
            if ann_id > max_id:
                max_id = ann_id
            n_old += 1
            if image_id in accepted:
                self.old_lines.setdefault(image_id, []).append(line)
                continue
            yield line
        self.n_old = n_old
        for image_id in sorted(accepted):
            corr = accepted[image_id]
            old = []
            for text in self.old_lines.pop(image_id, []):
                ann = json.loads(text)
                if ann.get("iscrowd"):  # a crowd region: nobody edits it, it stays verbatim
                    self.n_crowd_kept += 1
                    yield text
                else:
                    old.append(ann)
            if corr.source == "model":  # pseudo-labels of a pool image: no history to keep
                for b in corr.boxes:
                    max_id += 1
                    bbox = [float(v) for v in b.bbox]
                    ann = {"id": max_id, "image_id": image_id, "category_id": b.category_id,
                           "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                           "source": "model", "round": self.number, "annotator": "model",
                           "time": corr.time or self.now,
                           "provenance": {"model_version": corr.model_version,
                                          "score": b.score}}
                    self.n_model += 1
                    yield _line(ann)
                continue
            annotator = corr.annotator or "unknown"
            when = corr.time or self.now
            boxes = [{"bbox": [float(v) for v in b.bbox], "category_id": b.category_id}
                     for b in corr.boxes]
            diff = compare(old, boxes)
            matched = {j: i for i, j in same_object_pairs(old, boxes, same_class=False)}
            kept: list[dict] = []  # labels the person left as they were: confirmed
            new = []  # boxes the person drew or changed
            for j, box in enumerate(boxes):
                i = diff["unchanged"].get(j)
                if i is not None:
                    ann = {**old[i], "verified": {"annotator": annotator, "round": self.number,
                                                  "time": when}}
                    kept.append(ann)
                else:
                    max_id += 1
                    bbox = box["bbox"]
                    ann = {"id": max_id, "image_id": image_id, "category_id": box["category_id"],
                           "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                           "source": "human", "round": self.number, "annotator": annotator,
                           "time": when}
                    i = matched.get(j)
                    if i is not None and "segmentation" in old[i] and same_geometry(
                            old[i]["bbox"], bbox):
                        # only the class changed: the outline still fits the object
                        ann.update(bbox=list(old[i]["bbox"]),
                                   area=old[i].get("area", ann["area"]),
                                   segmentation=old[i]["segmentation"])
                    if corr.annotators:
                        ann["consensus"] = {"annotators": list(corr.annotators),
                                            "agreement": corr.agreement,
                                            "support": corr.boxes[j].support}
                    new.append(ann)
                yield _line(ann)
            kept_ids = {a["id"] for a in kept}
            replaced = [a for a in old if a["id"] not in kept_ids]
            self.n_new += len(new)
            self.n_confirmed += len(kept)
            for ann in replaced:
                src = ann.get("source", "original")
                self.removed_sources[src] = self.removed_sources.get(src, 0) + 1
            if image_id in self.from_pool:
                self.pool_boxes += len(new)
            else:
                for kind, n in diff["counts"].items():
                    self.kinds[kind] += n
            record: dict[str, Any] = {
                "image_id": image_id, "round": self.number, "time": when,
                "annotator": annotator, "task_id": corr.task_id,
                "labeling_annotation_id": corr.annotation_id,
                "replaced": replaced, "replaced_by": [a["id"] for a in new],
                "confirmed": sorted(kept_ids), "changes": diff["counts"], "conflict": False,
            }
            if corr.annotators:
                record["consensus"] = {"annotators": list(corr.annotators),
                                       "agreement": corr.agreement}
            if corr.superseded:  # the service's other annotations of the task, which lost
                record["labeling_superseded"] = list(corr.superseded)
            human = [a for a in old if a.get("source") == "human"]
            if human:
                previous = max(human, key=lambda a: (a.get("round") or 0, a["id"]))
                record.update(conflict=True, previous_round=previous.get("round"),
                              previous_annotator=previous.get("annotator"))
                self.conflicts.append({
                    "image_id": image_id, "annotator": annotator,
                    "previous_round": previous.get("round"),
                    "previous_annotator": previous.get("annotator"),
                    "changed": bool(replaced or new),
                })
            self.history.append(_line(record))
        self.max_id = max_id

    def hitl_history(self, items: Iterator[str]) -> Iterator[str]:
        yield from items
        yield from self.history


class _Source:
    """The parent's lines as one stream, split into its head and its lists in order."""

    def __init__(self, path: Path) -> None:
        self.it = iter_coco_lines(path)
        self.pending: tuple[str, str] | None = None
        self.head: dict[str, Any] = {}
        for key, value in self.it:
            if key.startswith("head:"):
                self.head[key[5:]] = json.loads(value)
            else:
                self.pending = (key, value)
                break

    def items(self, list_key: str) -> Iterator[str]:
        """Lines of ``list_key``; stops at the next list (lists come in the file's order)."""
        while self.pending is not None and self.pending[0] == list_key:
            yield self.pending[1]
            self.pending = next(self.it, None)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_report_path(store: DatasetStore, round_key: str) -> Path:
    """``rounds/<dag_id>/<run_id>/merge_report.json`` for a round key ``<dag_id>|<run_id>``."""
    dag_id, sep, run_id = round_key.partition("|")
    if not sep:
        dag_id, run_id = "_merge", round_key
    return Layout(store.layout.root).round(dag_id, run_id).merge_report


def _result(manifest: dict, report_path: Path) -> dict:
    summary = manifest["counts"]["merge"]
    return {
        "version": manifest["version"],
        "parent": manifest["parent"],
        "round": manifest["round"],
        **{key: summary[key] for key in _SUMMARY_KEYS},
        "report": str(report_path),
    }


def merge_corrections(
    store: DatasetStore,
    *,
    base_version: str,
    corrections: Corrections,
    round_key: str,
    human_weight: float,
    decay: float,
    now: str | None = None,
    report_path: str | Path | None = None,
    model_weight: float = 0.5,
) -> dict:
    """Publish a new dataset version with the corrections of one round merged in.

    Rules: a labeled correction replaces all boxes of its image with ``human`` boxes
    (``round`` = the new version's number, ``annotator``, ``time``, new ids); the replaced
    annotations are kept verbatim in ``hitl_history`` (carried over from the parent, so it
    accumulates). **Latest round wins**: a correction of an image whose boxes are already
    human replaces them, and the conflict is recorded in the report and in the history
    record (``conflict: true``, ``previous_round``, ``previous_annotator``); it is never
    silent. Skipped images keep their labels. Labeled pool images join ``train``. Verified
    images get ``weight = human_weight`` and ``hitl_verified_round``; images verified in an
    earlier round have ``weight - 1`` multiplied by ``decay``. Corrections of unknown image
    ids, duplicates, and boxes that do not fit the image or name an unknown category are
    rejected and recorded, never merged.

    Refused (DatasetError) when ``base_version`` is not LATEST: LATEST never loses a
    published round.

    Idempotent: a ``round_key`` already published returns the same output and creates no
    version (and if a crash left that version published but not ``LATEST``, it becomes
    ``LATEST``). Publishing is atomic (see :meth:`DatasetStore.publish`).

    :param store: the dataset.
    :param base_version: the version the corrections were made against (the parent).
    :param corrections: the validated corrections of the round.
    :param round_key: idempotency key, ``"<dag_id>|<run_id>"``.
    :param human_weight: sampling weight of images verified this round.
    :param decay: factor applied, per merge, to the extra weight of older verifications.
    :param model_weight: sampling weight of a pool image the model labeled alone (a
        correction with ``source: model``: its boxes are written with ``source: model`` and
        ``provenance: {model_version, score}``; the image is not stamped verified, so people
        may still review it, and a person's later fix of such a box is counted in
        ``model_labels_corrected``).
    :param now: ISO time for boxes whose correction carries none (default: now, UTC).
    :param report_path: where the merge report goes (default
        ``rounds/<dag_id>/<run_id>/merge_report.json`` from the round key).
    :return: ``{"version", "parent", "round", "images_corrected", "pool_labeled", "skipped",
        "conflicts", "rejected", "report"}``.
    """
    report_path = Path(report_path) if report_path else default_report_path(store, round_key)
    human_weight, decay = float(human_weight), float(decay)
    if not (math.isfinite(human_weight) and human_weight > 0 and 0.0 <= decay <= 1.0):
        raise ValueError(f"need human_weight > 0 and 0 <= decay <= 1, got {human_weight}, {decay}")
    corrections_sha = _sha256_text(corrections.model_dump_json())
    existing = store.find_by_key(round_key)
    if existing is not None:
        recorded = store.manifest(existing).get("merge_input", {}).get("corrections_sha256")
        if recorded != corrections_sha:
            log.warning("round %s was merged as %s from other corrections than these; the "
                        "round key wins: nothing new is published", round_key, existing)
        return _existing(store, existing, report_path)
    if corrections.dataset != store.name:
        raise DatasetError(f"corrections are for dataset {corrections.dataset!r}, "
                           f"not {store.name!r}")
    if corrections.version != base_version:
        raise DatasetError(f"corrections were made against {corrections.version}, "
                           f"not the base version {base_version}")
    parent_manifest = store.verify(base_version)
    if parent_manifest.get("format") != FORMAT:
        raise DatasetError(f"{base_version} is not in the {FORMAT} layout")
    latest = store.latest()
    if latest != base_version:
        # Publishing a branch off an older version would point LATEST at it and drop the
        # rounds merged in between from LATEST. Refuse; the round can be run again on LATEST.
        raise DatasetError(
            f"dataset {store.name!r}: the corrections of {round_key} were made against "
            f"{base_version}, but LATEST is {latest} (another round was merged meanwhile: two "
            f"pipelines share the dataset, or this run merges late); merging would drop "
            f"{latest}'s rounds from LATEST. Run the round again from {latest}.")
    versions = store.versions()
    version = store.next_version()
    number = version_number(version)
    now = now or utcnow()
    plan = _plan(corrections)
    written: dict[str, Any] = {}

    def writer(out: Any) -> dict:
        if store.versions() != versions:  # we hold the store's lock here
            raise DatasetError(f"another version of {store.name} was published during the "
                               "merge; run it again")
        source = _Source(store.annotations_path(base_version))
        head = source.head
        categories = {c["id"] for c in head.get("categories", [])}
        merger = _Merger(
            plan=plan, number=number, human_weight=human_weight, decay=decay, now=now,
            categories=categories, model_weight=model_weight,
            min_next_id=parent_manifest["counts"].get("max_annotation_id", 0) + 1,
        )
        write_coco_lines(out, head, {
            "images": merger.images(source.items("images")),
            "annotations": merger.annotations(source.items("annotations")),
            "hitl_history": merger.hitl_history(source.items("hitl_history")),
        })
        if source.pending is not None:
            raise DatasetError(f"{base_version}: unexpected list {source.pending[0]!r}")
        report = _report(store, merger, plan, corrections, version=version, parent=base_version,
                         round_key=round_key, now=now, human_weight=human_weight, decay=decay)
        counts = _counts(parent_manifest["counts"], merger, report)
        report["dataset_counts"] = {k: v for k, v in counts.items() if k != "merge"}
        # Written before the version is renamed into place: if the publish fails after this,
        # the retry rewrites it; if it succeeds, the report is already there.
        write_json_atomic(report_path, report)
        written["report"] = report
        return counts

    published = store.publish(
        writer=writer, parent=base_version, round=number, round_key=round_key,
        note=f"merged {len(corrections.items)} correction(s) of {round_key}",
        extra={"merge_input": {"corrections_sha256": corrections_sha,
                               "human_weight": human_weight, "decay": decay}},
    )
    if "report" not in written:  # another process published this round first
        return _existing(store, published, report_path)
    summary = written["report"]["counts"]
    log.info("merged %s into %s %s: %s", round_key, store.name, published,
             {k: summary[k] for k in _SUMMARY_KEYS})
    return _result(store.manifest(published), report_path)


def _existing(store: DatasetStore, version: str, report_path: Path) -> dict:
    manifest = store.manifest(version)
    log.info("round %s was already merged as %s", manifest.get("round_key"), version)
    latest = store.latest()
    if latest is None or version_number(latest) < version_number(version):
        # a crash between publishing and LATEST: finish the job
        with store.lock():
            latest = store.latest()
            if latest is None or version_number(latest) < version_number(version):
                store.verify(version)
                store._set_latest(version)
                log.info("LATEST of %s now points at %s", store.name, version)
    report = None
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except ValueError:
            report = None
    if not isinstance(report, dict) or report.get("version") != version:
        write_json_atomic(report_path, {
            "dataset": store.name, "version": version, "parent": manifest["parent"],
            "round": manifest["round"], "round_key": manifest.get("round_key"),
            "counts": manifest["counts"]["merge"],
            "fixed_by_kind": manifest["counts"]["merge"].get("fixed_by_kind", {}),
            "note": "rebuilt from the version's manifest: the per-image lists were lost",
        })
    return _result(manifest, report_path)


def _report(store: DatasetStore, merger: _Merger, plan: _Plan, corrections: Corrections, *,
            version: str, parent: str, round_key: str, now: str, human_weight: float,
            decay: float) -> dict:
    kinds = merger.kinds
    fixed = {kind: kinds[kind] for kind in KINDS}
    counts = {
        "corrections": len(corrections.items),
        "images_corrected": len(merger.accepted),
        "pool_labeled": merger.pool_labeled,
        "skipped": len(merger.seen_skipped),
        "conflicts": len(merger.conflicts),
        "rejected": len(plan.rejected),
        "collect_rejected": len(corrections.rejected),
        "boxes_added": kinds["missing"],
        "boxes_removed": kinds["spurious"],
        "boxes_changed": kinds["class_swap"] + kinds["bad_box"],
        "boxes_unchanged": kinds["unchanged"],
        "pool_boxes_labeled": merger.pool_boxes,
        "human_boxes_written": merger.n_new,
        "labels_confirmed": merger.n_confirmed,
        "weights_decayed": merger.decayed,
        "auto_labeled_images": merger.auto_labeled,
        "model_boxes_written": merger.n_model,
        "model_labels_corrected": merger.removed_sources.get("model", 0),
        "accepted_boxes_changed_by_people": sum(c.accepted_changed for c in corrections.items),
        "consensus_images": merger.consensus,
        "crowd_kept": merger.n_crowd_kept,
        "held": len(corrections.held),
        "gold_tasks": len(corrections.gold),
        "fixed_by_kind": fixed,
    }
    return {
        "dataset": store.name, "version": version, "parent": parent,
        "round": version_number(version), "round_key": round_key, "created": now,
        "human_weight": human_weight, "decay": decay,
        "rule": "latest round wins; human-over-human conflicts are recorded; labels "
                "submitted unchanged are kept as they were and stamped verified",
        "counts": counts,
        "fixed_by_kind": fixed,
        "skipped": merger.seen_skipped,
        "conflicts": merger.conflicts,
        "rejected": sorted(plan.rejected, key=lambda r: (r["image_id"], r["task_id"])),
    }


def _counts(parent: dict, merger: _Merger, report: dict) -> dict:
    """The new version's manifest counts, from the parent's and what the merge changed."""
    sources = dict(parent.get("sources", {}))
    for src, n in merger.removed_sources.items():
        sources[src] = sources.get(src, 0) - n
    sources["human"] = sources.get("human", 0) + merger.n_new
    sources["model"] = sources.get("model", 0) + merger.n_model
    sources = {k: v for k, v in sources.items() if v}
    splits = dict(parent.get("splits", {}))
    moved = merger.pool_labeled + merger.auto_labeled
    if moved:
        splits["pool"] = splits.get("pool", 0) - moved
        splits["train"] = splits.get("train", 0) + moved
    splits = {k: v for k, v in splits.items() if v}
    n_removed = sum(merger.removed_sources.values())
    return {
        "images": parent["images"],
        "annotations": merger.n_old - n_removed + merger.n_new + merger.n_model,
        "categories": parent["categories"],
        "splits": splits,
        "sources": sources,
        "weighted_images": parent.get("weighted_images", 0) + merger.weighted_delta,
        "max_annotation_id": merger.max_id,
        "merge": report["counts"],
    }
