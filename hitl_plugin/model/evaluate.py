"""Evaluate a checkpoint with pycocotools on the clean held-out COCO file.

Ultralytics' ``val(save_json=True)`` writes ``predictions.json`` and then evaluates it with
``faster-coco-eval``, which it tries to ``pip install`` when missing (that hung for 12
minutes on a blocked network). Our validator
(:func:`hitl_plugin.model.yolo.predictions_only_validator`) writes the predictions and skips
Ultralytics' own COCO evaluation; we evaluate the file with pycocotools' ``COCOeval`` against
our own COCO file.

The YOLO export names images by COCO image id, so a prediction's ``image_id`` (the file
stem) is the COCO id. Its ``category_id`` is ``class index + 1``; it is mapped back to the
COCO category id through the categories sorted by id (the export's class order).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from hitl_plugin.model import yolo
from hitl_plugin.paths import ModelPaths
from hitl_plugin.schemas import write_json_atomic

log = logging.getLogger(__name__)


def coco_metrics(val_coco: dict, predictions: list[dict]) -> dict:
    """COCO bbox metrics of ``predictions`` (COCO category ids) against ``val_coco``."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = sorted(val_coco["categories"], key=lambda c: c["id"])
    empty = {"map50_95": 0.0, "map50": 0.0, "per_class": {c["name"]: 0.0 for c in cats}}
    if not predictions or not val_coco.get("annotations"):
        return empty  # COCO.loadRes([]) raises IndexError; no truth boxes: nothing to score
    gt_data = {
        "info": val_coco.get("info", {}),
        "images": [{k: img[k] for k in ("id", "width", "height", "file_name")}
                   for img in val_coco["images"]],
        "annotations": [
            {**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3]),
             "iscrowd": a.get("iscrowd", 0)}
            for a in val_coco["annotations"]
        ],
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats],
    }
    with contextlib.redirect_stdout(io.StringIO()) as out:
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes(predictions)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("COCOeval:\n%s", out.getvalue())
    precision = ev.eval["precision"]  # [iou, recall, class, area, max dets]
    per_class = {}
    for k, cat in enumerate(cats):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[cat["name"]] = round(float(p.mean()), 6) if p.size else 0.0
    stats = [max(float(v), 0.0) for v in ev.stats[:2]]  # -1 means "no truth": report 0
    return {"map50_95": round(stats[0], 6), "map50": round(stats[1], 6),
            "per_class": per_class,
            "coco_stats": [round(float(v), 6) for v in np.asarray(ev.stats)]}


def to_coco_predictions(raw: list[dict], val_coco: dict) -> list[dict]:
    """Map Ultralytics' ``predictions.json`` rows to our COCO ids; drop unknown images."""
    cat_ids = [c["id"] for c in sorted(val_coco["categories"], key=lambda c: c["id"])]
    image_ids = {img["id"] for img in val_coco["images"]}
    out = []
    for row in raw:
        image_id = row["image_id"]
        if isinstance(image_id, str) and image_id.isdigit():
            image_id = int(image_id)
        index = int(row["category_id"]) - 1  # Ultralytics writes class index + 1 (custom data)
        if image_id not in image_ids or not 0 <= index < len(cat_ids):
            continue
        out.append({"image_id": image_id, "category_id": cat_ids[index],
                    "bbox": [float(v) for v in row["bbox"]], "score": float(row["score"])})
    return out


#: Boxes from this score on count in the confidence histogram of the round report.
HISTOGRAM_MIN_SCORE = 0.05
HISTOGRAM_BINS = 20


def confidence_histogram(scores: list[float], *, bins: int = HISTOGRAM_BINS,
                         min_score: float = HISTOGRAM_MIN_SCORE) -> dict:
    """Counts of box scores >= ``min_score`` in ``bins`` equal bins over [0, 1]."""
    counts = [0] * bins
    for score in scores:
        if score >= min_score:
            counts[min(int(score * bins), bins - 1)] += 1
    return {"bins": bins, "min_score": min_score, "counts": counts}


def evaluate(
    checkpoint: Path,
    data_yaml: Path,
    val_coco: Path,
    out: ModelPaths,
    *,
    imgsz: int,
    device: str = "auto",
    batch: int = 16,
) -> dict:
    """Evaluate ``checkpoint`` on the ``val`` split of ``data_yaml`` against ``val_coco``.

    One pass of the model over the held-out set gives everything later steps need from it:
    the COCO metrics, and the histogram of the model's confidences that the round report
    plots (so the report runs no model).

    :param checkpoint: the ``.pt`` to evaluate.
    :param data_yaml: the YOLO export (its ``val`` images are named by COCO image id).
    :param val_coco: the clean held-out COCO file.
    :param out: the training folder: the metrics go to ``out.metrics``, Ultralytics'
        predictions to ``out.predictions``.
    :return: ``{"map50_95", "map50", "per_class", "n_images", "n_predictions", "checkpoint",
        "confidences"}``.
    """
    checkpoint = yolo.resolve_weights(checkpoint)
    val = json.loads(Path(val_coco).read_text(encoding="utf-8"))
    ultralytics = yolo.import_ultralytics()
    device = yolo.resolve_device(device)
    pred_file = out.predictions
    pred_file.unlink(missing_ok=True)  # never read a stale file
    model = ultralytics.YOLO(str(checkpoint))
    model.val(
        validator=yolo.predictions_only_validator(), data=str(Path(data_yaml).absolute()),
        split="val", imgsz=imgsz, batch=batch, device=device, save_json=True, plots=False,
        verbose=False, project=str(pred_file.parent.parent.absolute()),
        name=pred_file.parent.name, exist_ok=True, workers=0,
    )
    raw = json.loads(pred_file.read_text(encoding="utf-8")) if pred_file.is_file() else []
    predictions = to_coco_predictions(raw, val)
    metrics = coco_metrics(val, predictions)
    result = {
        "map50_95": metrics["map50_95"],
        "map50": metrics["map50"],
        "per_class": metrics["per_class"],
        "n_images": len(val["images"]),
        "n_predictions": len(predictions),
        "checkpoint": str(checkpoint),
        "confidences": confidence_histogram([p["score"] for p in predictions]),
    }
    write_json_atomic(out.metrics, result)
    log.info("evaluated %s on %s images: mAP50-95 %.4f, mAP50 %.4f (%s predictions)",
             checkpoint.name, result["n_images"], result["map50_95"], result["map50"],
             result["n_predictions"])
    return result
