"""Score images: model uncertainty (pool) and suspected label errors (labeled images).

The model runs once over the images of a dataset version, streamed from a ``.txt`` list of
paths (a Python list of thousands of paths makes Ultralytics open them all first). Each image
becomes one JSON line (:class:`hitl_plugin.schemas.ImageScore`) in a JSONL file, so memory
stays bounded however large the version is.

**Class probabilities.** ``Results.boxes.conf`` only holds the top class score. A small
``DetectionPredictor`` subclass (:func:`hitl_plugin.model.yolo.class_prob_predictor`) keeps,
for every box that survives NMS, the full vector of per-class sigmoid scores from the raw
head output. YOLOv8
scores every class independently (sigmoid, not softmax), so the vector does **not** sum to
one; :func:`uncertainty_of` normalizes it before taking the entropy.

**Uncertainty** (per detection with score >= ``selection.conf``; the image takes the
*maximum* over its detections, i.e. its most doubtful box):

- ``least_confidence`` = 1 - p1
- ``margin`` = 1 - (p1 - p2) (top two sigmoid scores)
- ``entropy`` = H(p / sum p) / log(K), in [0, 1]

An image with no detection at or above ``selection.conf`` gets 1.0 for all three: the model
sees nothing it trusts there, which is the case people should look at first.

**Label-error suspicion** (train split only) compares the existing labels with the model's
boxes kept down to a low confidence floor (:data:`LOW_CONF`): a greedy, class-agnostic
matching (predictions by descending score, each to the unmatched label of highest IoU >=
``match_iou``), then

- ``class_swap``: a label matched by a confident box of another class. Score = the box's
  score x (1 - the model's probability of the *labeled* class at that place).
- ``bad_box``: a label whose best confident same-class box overlaps it at IoU below
  ``bad_box_iou``. Score = the box's score x (1 - IoU / bad_box_iou)^0.5.
- ``spurious``: a label that no box supports: score = 0.4 x (1 - the highest probability of
  the labeled class among boxes overlapping it at IoU >= ``match_iou``; boxes down to
  :data:`LOW_CONF` count, so a weak but real object is not called spurious). The factor
  (:data:`KIND_WEIGHTS`) is there because a model misses real objects about as often as
  people draw boxes on nothing.
- ``missing``: a confident box (score >= ``selection.conf``) that overlaps no label of any
  class at IoU >= ``match_iou`` (nor the label of a bad box). Score = the box's score.

Crowd annotations (``iscrowd: 1``, one region around many objects) are not labels to check:
they are never suspected, and a box of the model inside one (intersection over the box's own
area >= ``match_iou``, COCOeval's rule for crowd regions) is not ``missing``.

The image's ``label_error_score`` is the noisy-OR of its suspicion scores,
``1 - prod(1 - s)``: one strong suspicion or several weaker ones rank an image high.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hitl_plugin.boxes import iou_matrix
from hitl_plugin.config import SelectionConfig
from hitl_plugin.paths import Layout
from hitl_plugin.schemas import ImageScore, Prediction, Suspicion

log = logging.getLogger(__name__)

#: Boxes down to this score take part in the label checks (even weak support lowers a
#: label's ``spurious`` score); only boxes at or above ``selection.conf`` become
#: pre-annotations or count towards uncertainty.
LOW_CONF = 0.01
#: A confident same-class box overlapping an unmatched label at least this much is read as
#: a badly drawn box of that object rather than a spurious label plus a missing one.
BAD_BOX_MIN_IOU = 0.1
_ROUND = 4
#: Per-kind factors on suspicion scores, so that one kind's score means about as much as
#: another's when images are ranked. A label the model does not see is as often an object
#: the model misses (occluded, small, a weak model) as a wrong label: on synthetic shapes
#: (400 images, noise 0.1, YOLOv8n) unweighted ``spurious`` suspicions filled the top 10 %
#: at precision 0.48; scaled by 0.3-0.5 the top 10 % reached 0.90-0.95 (0.70 instead of
#: 0.48 with a half-trained model), with a flat optimum, so 0.4.
KIND_WEIGHTS: dict[str, float] = {"missing": 1.0, "spurious": 0.4, "class_swap": 1.0,
                                  "bad_box": 1.0}


# -- pure functions (no model) ------------------------------------------------------------


def uncertainty_of(probs: np.ndarray | Sequence[Sequence[float]]) -> dict[str, float]:
    """Image uncertainty from the per-class scores of its detections (rows).

    Each row is one detection's vector of per-class sigmoid scores (not summing to one; it
    is normalized for the entropy only). The image takes the maximum over detections.
    No detection: 1.0 for every measure.
    """
    p = np.asarray(probs, dtype=float)
    if p.size == 0:
        return {"least_confidence": 1.0, "margin": 1.0, "entropy": 1.0}
    p = np.clip(p.reshape(len(p), -1), 0.0, 1.0)
    k = p.shape[1]
    top = -np.sort(-p, axis=1)
    p1 = top[:, 0]
    p2 = top[:, 1] if k > 1 else np.zeros(len(p))
    norm = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(norm > 0, norm * np.log(norm), 0.0).sum(axis=1)
    h = h / math.log(k) if k > 1 else np.zeros(len(p))
    return {
        "least_confidence": round(float(np.max(1.0 - p1)), _ROUND),
        "margin": round(float(np.max(1.0 - (p1 - p2))), _ROUND),
        "entropy": round(float(np.clip(np.max(h), 0.0, 1.0)), _ROUND),
    }


def _prob_of(pred: dict, category_id: int, cat_index: dict[int, int]) -> float:
    """The model's probability of ``category_id`` for one predicted box."""
    probs = pred.get("class_probs")
    if probs is not None and category_id in cat_index:
        return float(probs[cat_index[category_id]])
    return float(pred["score"]) if pred["category_id"] == category_id else 0.0


def find_suspicions(
    labels: Sequence[dict],
    preds: Sequence[dict],
    categories: Sequence[int],
    *,
    conf: float = 0.25,
    match_iou: float = 0.5,
    bad_box_iou: float = 0.75,
    low_conf: float = LOW_CONF,
    support_iou: float | None = None,
    weights: dict[str, float] | None = None,
    crowd: Sequence[Sequence[float]] = (),
) -> list[Suspicion]:
    """Compare one image's labels with the model's boxes; return the suspected errors.

    :param labels: COCO annotations (``id``, ``bbox``, ``category_id``).
    :param preds: boxes (``bbox``, ``category_id``, ``score`` and optionally
        ``class_probs`` in the order of ``categories``), down to ``low_conf``.
    :param categories: category ids, sorted (the order of ``class_probs``).
    :param conf: score from which a box is trusted (missing, swap, bad box).
    :param match_iou: IoU for a box to match a label.
    :param bad_box_iou: a matched same-class box below this IoU makes a bad box.
    :param low_conf: boxes below this score are ignored altogether.
    :param support_iou: overlap from which a box supports a label against ``spurious``
        (default ``match_iou``).
    :param weights: per-kind factors on the scores (default :data:`KIND_WEIGHTS`).
    :param crowd: the boxes of the image's crowd regions (``labels`` holds none of them): a
        box mostly inside one is not ``missing``.
    """
    weights = KIND_WEIGHTS if weights is None else weights
    support_iou = match_iou if support_iou is None else support_iou
    cat_index = {c: i for i, c in enumerate(categories)}
    preds = sorted((p for p in preds if p["score"] >= low_conf), key=lambda p: -p["score"])
    if not labels and not preds:
        return []
    lboxes = np.array([lab["bbox"] for lab in labels], dtype=float).reshape(-1, 4)
    pboxes = np.array([p["bbox"] for p in preds], dtype=float).reshape(-1, 4)
    iou = iou_matrix(lboxes, pboxes)  # labels x preds

    # Greedy class-agnostic matching, most confident box first (as COCOeval does per class).
    label_match: dict[int, int] = {}
    pred_match: dict[int, int] = {}
    for j in range(len(preds)):
        if not len(labels):
            break
        cand = np.where(iou[:, j] >= match_iou, iou[:, j], -1.0)
        for li in label_match:
            cand[li] = -1.0
        i = int(np.argmax(cand))
        if cand[i] >= match_iou:
            label_match[i] = j
            pred_match[j] = i

    out: list[Suspicion] = []
    explained: set[int] = set()  # preds that explain a bad box (not "missing")

    def sus(kind: str, score: float, lab: dict | None, pred: dict | None, ov: float | None):
        score *= weights.get(kind, 1.0)
        out.append(Suspicion(
            kind=kind, score=round(float(np.clip(score, 0.0, 1.0)), _ROUND),
            label_ann_id=lab.get("id") if lab else None,
            label_bbox=[float(v) for v in lab["bbox"]] if lab else None,
            label_category_id=lab["category_id"] if lab else None,
            pred_bbox=list(pred["bbox"]) if pred else None,
            pred_category_id=pred["category_id"] if pred else None,
            pred_score=round(float(pred["score"]), _ROUND) if pred else None,
            iou=round(float(ov), _ROUND) if ov is not None else None,
        ))

    for i, lab in enumerate(labels):
        cls = lab["category_id"]
        overlapping = [j for j in range(len(preds)) if iou[i, j] >= support_iou]
        support = max((_prob_of(preds[j], cls, cat_index) for j in overlapping), default=0.0)
        # the best confident box of the labeled class near this label
        same = [j for j in range(len(preds))
                if preds[j]["category_id"] == cls and preds[j]["score"] >= conf
                and iou[i, j] >= BAD_BOX_MIN_IOU
                and (pred_match.get(j, i) == i)]
        best_same = max(same, key=lambda j: iou[i, j], default=None)
        j = label_match.get(i)
        if j is not None and preds[j]["category_id"] != cls:
            if preds[j]["score"] >= conf:
                sus("class_swap", preds[j]["score"] * (1.0 - support), lab, preds[j], iou[i, j])
                continue
            j = None  # a weak box of another class supports nothing: as if unmatched
        if j is not None:
            if best_same is not None and iou[i, best_same] < bad_box_iou:
                jb = best_same
                score = preds[jb]["score"] * math.sqrt(max(0.0, 1.0 - iou[i, jb] / bad_box_iou))
                sus("bad_box", score, lab, preds[jb], iou[i, jb])
                explained.add(jb)
            continue
        # unmatched label: a badly drawn box of a real object, or a box on nothing
        if best_same is not None and pred_match.get(best_same, i) == i:
            jb = best_same
            score = preds[jb]["score"] * math.sqrt(max(0.0, 1.0 - iou[i, jb] / bad_box_iou))
            sus("bad_box", score, lab, preds[jb], iou[i, jb])
            explained.add(jb)
            continue
        sus("spurious", 1.0 - support, lab, None, None)

    for j, pred in enumerate(preds):
        if pred["score"] < conf or j in pred_match or j in explained:
            continue
        if len(labels) and float(iou[:, j].max()) >= match_iou:
            continue  # a duplicate box on a labeled object (class-aware NMS keeps both classes)
        if any(in_region(pred["bbox"], region) >= match_iou for region in crowd):
            continue  # one of many objects of a crowd region: nobody labels those one by one
        sus("missing", pred["score"], None, pred, None)
    return out


def in_region(box: Sequence[float], region: Sequence[float]) -> float:
    """The share of ``box``'s area inside ``region`` (COCOeval's overlap with a crowd)."""
    iw = min(box[0] + box[2], region[0] + region[2]) - max(box[0], region[0])
    ih = min(box[1] + box[3], region[1] + region[3]) - max(box[1], region[1])
    area = box[2] * box[3]
    return iw * ih / area if iw > 0 and ih > 0 and area > 0 else 0.0


def aggregate(suspicions: Iterable[Suspicion]) -> float:
    """The image's label-error score: noisy-OR of its suspicion scores."""
    keep = 1.0
    for s in suspicions:
        keep *= 1.0 - min(max(s.score, 0.0), 1.0)
    return round(1.0 - keep, _ROUND + 2)


def score_record(
    image: dict,
    labels: Sequence[dict],
    preds: Sequence[dict],
    categories: Sequence[int],
    selection: SelectionConfig,
    *,
    low_conf: float = LOW_CONF,
) -> ImageScore:
    """Build one image's record from its labels and predicted boxes (pure).

    Crowd annotations among ``labels`` are not checked and not counted (see the module
    docstring).
    """
    crowd = [lab["bbox"] for lab in labels if lab.get("iscrowd")]
    labels = [lab for lab in labels if not lab.get("iscrowd")]
    split = image.get("hitl_split", "train")
    confident = [p for p in preds if p["score"] >= selection.conf]
    probs = [p["class_probs"] if p.get("class_probs") is not None else [p["score"]]
             for p in confident]
    if confident and any(p.get("class_probs") is None for p in confident):
        probs = [[p["score"]] for p in confident]  # no vectors: least confidence only is exact
    suspicions: list[Suspicion] = []
    if split == "train":
        suspicions = find_suspicions(
            labels, preds, categories, conf=selection.conf, match_iou=selection.match_iou,
            bad_box_iou=selection.bad_box_iou, low_conf=low_conf, crowd=crowd)
    return ImageScore(
        image_id=image["id"],
        split=split,
        n_labels=len(labels),
        uncertainty=uncertainty_of(probs),
        label_error_score=aggregate(suspicions),
        suspicions=sorted(suspicions, key=lambda s: -s.score),
        predictions=[Prediction(**p) for p in confident],
    )


# -- the model ----------------------------------------------------------------------------


def predict_stream(
    checkpoint: str | os.PathLike[str],
    list_file: Path,
    *,
    imgsz: int,
    device: str = "auto",
    conf: float = LOW_CONF,
    iou: float = 0.6,
    batch: int = 16,
    threads: int = 2,
    embeddings: bool = False,
) -> Iterable[tuple]:
    """Yield ``(image path, boxes)`` for every image listed in ``list_file``, streamed.

    Boxes are dicts ``bbox`` (COCO pixels), ``cls`` (YOLO index), ``score`` and
    ``class_probs`` (per-class sigmoid scores, YOLO index order).

    :param embeddings: yield ``(image path, boxes, embedding)``, the embedding being the
        backbone's pooled output for the image (:func:`hitl_plugin.model.yolo.backbone_output`),
        from the same forward pass.
    """
    from hitl_plugin.model import yolo

    model = yolo.load_offline_yolo(checkpoint)  # imports Ultralytics offline; never downloads
    import torch

    device = yolo.resolve_device(device)
    if device == "cpu":
        torch.set_num_threads(max(1, threads))
    results = model.predict(
        str(list_file), stream=True, imgsz=imgsz, conf=conf, iou=iou, device=device,
        batch=batch, verbose=False, predictor=yolo.class_prob_predictor(embeddings), save=False)
    for r in results:
        boxes = []
        xyxy = r.boxes.xyxy.cpu().numpy()
        scores = r.boxes.conf.cpu().numpy()
        classes = r.boxes.cls.cpu().numpy().astype(int)
        probs = getattr(r, "class_probs", None)
        for k in range(len(xyxy)):
            x1, y1, x2, y2 = (float(v) for v in xyxy[k])
            boxes.append({
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "cls": int(classes[k]),
                "score": float(scores[k]),
                "class_probs": None if probs is None else [float(v) for v in probs[k]],
            })
        if embeddings:
            yield r.path, boxes, r.embedding
        else:
            yield r.path, boxes


def score_images(
    checkpoint: str | os.PathLike[str],
    coco: dict,
    root: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    selection: SelectionConfig,
    imgsz: int,
    device: str = "auto",
    splits: Sequence[str] = ("train", "pool"),
    low_conf: float = LOW_CONF,
    batch: int = 16,
    threads: int = 2,
    drift_out: str | os.PathLike[str] | None = None,
    reference: dict | None = None,
) -> dict:
    """Score the images of a dataset version; write one :class:`ImageScore` per JSON line.

    :param checkpoint: the model (``.pt``).
    :param coco: the version's COCO dict (``file_name`` relative to the storage ``images/``).
    :param root: the storage root.
    :param out_path: the JSONL file to write (replaced atomically).
    :param selection: thresholds (``conf``, ``match_iou``, ``bad_box_iou``).
    :param imgsz: inference size in pixels.
    :param device: ``auto``, ``cpu`` or a CUDA index.
    :param splits: which ``hitl_split`` values to score.
    :param drift_out: also write the drift step's inputs there
        (:class:`~hitl_plugin.model.drift.DriftInputs`, ``.npz``): every scored image's box
        count, mean shown-box score and backbone embedding, from this same pass.
    :param reference: with ``drift_out``: the held-out set's COCO dict, whose images the
        same pass predicts too (split ``heldout`` in the drift inputs; not scored).
    :return: ``{"scores": path, "n_images": n, "seconds": s}`` (plus ``drift_inputs``).
    """
    started = time.monotonic()
    layout = Layout.at(root)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    categories = sorted(c["id"] for c in coco["categories"])
    images = [img for img in coco["images"] if img.get("hitl_split", "train") in splits]
    labels: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        labels.setdefault(ann["image_id"], []).append(ann)

    by_path: dict[str, list[dict]] = {}
    held: dict[str, list[dict]] = {}  # held-out images: predicted for the drift step only
    list_file = out_path.with_name(f".{out_path.stem}.images.txt")
    with open(list_file, "w", encoding="utf-8") as fh:
        for img in images:
            path = str(layout.image_path(img["file_name"]))
            if path not in by_path:
                fh.write(path + "\n")
            by_path.setdefault(path, []).append(img)
        if drift_out is not None:
            for img in (reference or {}).get("images", []):
                path = str(layout.image_path(img["file_name"]))
                if path not in by_path and path not in held:
                    fh.write(path + "\n")
                held.setdefault(path, []).append(img)
    embed = drift_out is not None
    drift_rows: list[tuple[int, str, list[dict], list[float]]] = []
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            if by_path or held:
                for path, boxes, *embedding in predict_stream(
                        checkpoint, list_file, imgsz=imgsz, device=device,
                        conf=min(low_conf, selection.conf), batch=batch, threads=threads,
                        embeddings=embed):
                    if boxes and max(b["cls"] for b in boxes) >= len(categories):
                        raise ValueError(
                            f"{checkpoint}: the model predicts class {max(b['cls'] for b in boxes)}"
                            f" but the dataset has {len(categories)} categories")
                    preds = [{"bbox": b["bbox"], "category_id": categories[b["cls"]],
                              "score": round(b["score"], _ROUND),
                              "class_probs": None if b["class_probs"] is None
                              else [round(v, _ROUND) for v in b["class_probs"]]}
                             for b in boxes]
                    resolved = str(Path(path).resolve())
                    for img in by_path.get(resolved, by_path.get(path, [])):
                        record = score_record(img, labels.get(img["id"], []), preds, categories,
                                              selection, low_conf=low_conf)
                        out.write(record.model_dump_json() + "\n")
                        n += 1
                        if embed:
                            drift_rows.append((img["id"], record.split, preds, embedding[0]))
                    if embed:
                        for img in held.get(resolved, held.get(path, [])):
                            drift_rows.append((img["id"], "heldout", preds, embedding[0]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        list_file.unlink(missing_ok=True)
    if n != len(images):
        raise RuntimeError(f"scored {n} of {len(images)} images (an image could not be read?)")
    result = {"scores": str(out_path), "n_images": n}
    if embed:
        from hitl_plugin.model.drift import DriftInputs

        n_held = sum(1 for row in drift_rows if row[1] == "heldout")
        want = sum(len(v) for v in held.values())
        if n_held != want:
            raise RuntimeError(f"predicted {n_held} of {want} held-out images for the drift "
                               "step (an image could not be read?)")
        inputs = DriftInputs.from_rows(drift_rows, selection.conf)
        result["drift_inputs"] = str(inputs.save(drift_out))
        log.info("kept the drift step's inputs of %s images (%s held out; embeddings of %s "
                 "numbers) -> %s", len(inputs), n_held, inputs.embedding.shape[1], drift_out)
    seconds = time.monotonic() - started
    log.info("scored %s images in %.1f s -> %s", n, seconds, out_path)
    return {**result, "seconds": round(seconds, 2)}


def read_scores(path: str | os.PathLike[str]) -> Iterable[ImageScore]:
    """Stream the records of a scores JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield ImageScore.model_validate(json.loads(line))
