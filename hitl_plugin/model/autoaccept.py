"""Auto-accepting what the model already knows (``selection.auto_accept``).

A model box whose score reaches the round's threshold is accepted without a person. The
threshold is ``selection.auto_accept_threshold``, or calibrated each round on the clean
held-out set: the lowest score at which the model's boxes there reach
``selection.auto_accept_precision`` (a box is right when it matches an unmatched true box
of the same class at IoU >= 0.5; boxes are matched by descending score, as COCOeval does).

A pool image whose every box (at or above ``selection.conf``) is accepted is labeled by the
model alone: pseudo-labels with provenance ``model`` that the merge writes with the lower
weight ``merge.model_weight``. A missed object cannot be seen from the boxes, so an image
must have at least one box. In an image sent to people, the accepted boxes are pre-filled and
marked as the model's.

Plain Python except :func:`held_out_predictions` (which runs the model).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from hitl_plugin.boxes import iou
from hitl_plugin.schemas import AutoAcceptance, AutoAccepted, CorrectedBox, Correction

log = logging.getLogger(__name__)

#: Fewer accepted held-out boxes than this cannot show a precision near 0.99: no threshold.
MIN_CALIBRATION_BOXES = 30
MATCH_IOU = 0.5


def match_predictions(truth: list[dict], predictions: list[dict],
                      match_iou: float = MATCH_IOU) -> list[tuple[float, bool]]:
    """``(score, right)`` for each prediction of one image: right when it takes an unmatched
    true box of its class at IoU >= ``match_iou`` (highest scores first)."""
    taken: set[int] = set()
    out = []
    for pred in sorted(predictions, key=lambda p: -float(p["score"])):
        best, best_iou = None, match_iou
        for k, t in enumerate(truth):
            if k in taken or t["category_id"] != pred["category_id"]:
                continue
            value = iou(pred["bbox"], t["bbox"])
            if value >= best_iou:
                best, best_iou = k, value
        if best is not None:
            taken.add(best)
        out.append((float(pred["score"]), best is not None))
    return out


def calibrate_threshold(val_coco: dict, predictions: Iterable[dict], *, precision: float,
                        min_boxes: int = MIN_CALIBRATION_BOXES) -> dict:
    """The lowest score ``t`` such that the held-out boxes scoring ``>= t`` have at least
    ``precision``, with at least ``min_boxes`` of them.

    :param predictions: COCO-style ``{"image_id", "category_id", "bbox", "score"}``.
    :return: ``{"threshold" (None when no score qualifies), "held_out_precision",
        "held_out_boxes"}``.
    """
    truth: dict[int, list[dict]] = {}
    for ann in val_coco.get("annotations", []):
        if not ann.get("iscrowd"):
            truth.setdefault(int(ann["image_id"]), []).append(ann)
    by_image: dict[int, list[dict]] = {}
    for pred in predictions:
        by_image.setdefault(int(pred["image_id"]), []).append(pred)
    scored = [m for image_id, preds in by_image.items()
              for m in match_predictions(truth.get(image_id, []), preds)]
    scored.sort(key=lambda m: -m[0])
    best = {"threshold": None, "held_out_precision": None, "held_out_boxes": 0}
    right = 0
    for n, (score, ok) in enumerate(scored, start=1):
        right += ok
        # only where the score changes: ties are accepted or refused together
        if n < len(scored) and scored[n][0] == score:
            continue
        if n >= min_boxes and right / n >= precision:
            best = {"threshold": round(score, 6), "held_out_precision": round(right / n, 4),
                    "held_out_boxes": n}
    return best


def acceptance(selection, *, calibration: dict | None, model_version: str | None
               ) -> AutoAcceptance | None:
    """The round's :class:`AutoAcceptance` from the config and a calibration (or None when
    auto-accept is off)."""
    if not selection.auto_accept:
        return None
    if selection.auto_accept_threshold is not None:
        return AutoAcceptance(threshold=selection.auto_accept_threshold, source="config",
                              model_version=model_version)
    calibration = calibration or {}
    return AutoAcceptance(threshold=calibration.get("threshold"), source="calibrated",
                          target_precision=selection.auto_accept_precision,
                          held_out_precision=calibration.get("held_out_precision"),
                          held_out_boxes=calibration.get("held_out_boxes"),
                          model_version=model_version)


def weakest_shown(predictions, conf: float) -> float | None:
    """The lowest score among the boxes the model shows (score >= ``conf``); None: none."""
    shown = [p.score for p in predictions if p.score >= conf]
    return min(shown) if shown else None


def accepts(weakest: float | None, threshold: float | None) -> bool:
    """Whether an image whose weakest shown box scores ``weakest`` is labeled by the model."""
    return threshold is not None and weakest is not None and weakest >= threshold


def all_accepted(predictions, threshold: float | None, conf: float) -> bool:
    """Whether every box the model shows (score >= ``conf``) is accepted, with at least one."""
    return accepts(weakest_shown(predictions, conf), threshold)


def auto_corrections(accepted: Iterable[AutoAccepted], model_version: str | None,
                     time: str | None = None) -> list[Correction]:
    """The model's answers for the images it labels alone, as corrections (``source:
    model``; each box keeps its score)."""
    return [Correction(image_id=a.image_id, status="labeled", answer="confirmed", task_id=0,
                       annotator="model", time=time, source="model",
                       model_version=model_version,
                       boxes=[CorrectedBox(bbox=list(b.bbox), category_id=b.category_id,
                                           score=round(b.score, 4)) for b in a.boxes])
            for a in accepted]


def accepted_changed(sample, answer_boxes: list[dict], threshold: float | None) -> int:
    """How many boxes the model had accepted in a pool task that the person changed or
    removed (an accepted box left exactly in place is kept)."""
    if threshold is None or sample.split != "pool":
        return 0
    kept = {(b["category_id"], tuple(round(v, 2) for v in b["bbox"])) for b in answer_boxes}
    return sum(1 for p in sample.predictions if p.score >= threshold
               and (p.category_id, tuple(round(v, 2) for v in p.bbox)) not in kept)


def held_out_predictions(checkpoint: str, val_coco: dict, root: Path, work: Path, *, imgsz: int,
                         device: str, threads: int, conf: float) -> list[dict]:
    """The model's boxes on the held-out images (COCO-style, our category ids)."""
    from hitl_plugin.model.score import predict_stream
    from hitl_plugin.paths import Layout

    layout = Layout.at(root)
    cats = sorted(c["id"] for c in val_coco["categories"])
    by_path = {str(layout.image_path(img["file_name"]).resolve()): img
               for img in val_coco["images"]}
    work.mkdir(parents=True, exist_ok=True)
    listing = work / "held_out_images.txt"
    listing.write_text("\n".join(by_path) + "\n")
    out = []
    for path, boxes in predict_stream(checkpoint, listing, imgsz=imgsz, device=device,
                                      conf=conf, threads=threads):
        img = by_path[str(Path(path).resolve())]
        out += [{"image_id": img["id"], "category_id": cats[b["cls"]], "bbox": b["bbox"],
                 "score": float(b["score"])} for b in boxes]
    return out
