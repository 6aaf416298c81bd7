"""Gold tasks that cannot be gamed, and which tasks several people answer.

A **gold image** is an image of the dataset whose true boxes are known: from the file
``labeling.gold`` (COCO, matched by ``file_name``), or, with ``labeling.gold_from_consensus``,
an image that an earlier round's consensus confirmed unanimously with 3 or more people.

A **gold task** looks exactly like a label-error review: its pre-fill is the image's true
boxes with known errors planted in them (a box removed, a class swapped, a box moved off its
object, a box on nothing), and its suspicions and reason text come from the same scorer that
flags real label errors (:func:`hitl_plugin.model.score.find_suspicions`, run on the planted
labels against the model's boxes of the image). A careless person who accepts everything
leaves the planted errors in place and scores below 1. Which tasks are gold is recorded in
``selection.json`` (``gold``) only, never in the task.

:func:`mix_gold` puts the round's gold tasks among the selected items, spread so that every
batch gets its share, and marks which tasks are answered by ``labeling.annotators_per_task``
people: every gold task, and a seeded ``labeling.overlap`` share of the others.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from hitl_plugin.boxes import iou
from hitl_plugin.config import PipelineConfig
from hitl_plugin.exceptions import ConfigError
from hitl_plugin.schemas import (
    CorrectedBox,
    GoldTruth,
    LabelBox,
    SelectedSample,
    SelectionManifest,
)

log = logging.getLogger(__name__)

__all__ = ["gold_images", "mix_gold", "move_off", "plant_errors"]

#: An image confirmed by consensus becomes gold with at least this many people, all agreeing.
CONSENSUS_GOLD_PEOPLE = 3
PLANTABLE = ("missing", "class_swap", "bad_box", "spurious")


def gold_images(config: PipelineConfig, coco: dict) -> dict[int, GoldTruth]:
    """The gold images available to this round, by image id (train images of ``coco`` only).

    :raises ConfigError: naming the gold file and the problem (unreadable, not COCO, an
        image that is not in the dataset, an unknown class).
    """
    images = {img["id"]: img for img in coco["images"]}
    out: dict[int, GoldTruth] = {}
    lab = config.labeling
    if lab.gold_from_consensus:
        labels: dict[int, list[dict]] = {}
        for ann in coco.get("annotations", []):
            labels.setdefault(ann["image_id"], []).append(ann)
        for img in coco["images"]:
            mark = img.get("hitl_consensus")
            if (isinstance(mark, dict) and int(mark.get("people", 0)) >= CONSENSUS_GOLD_PEOPLE
                    and float(mark.get("agreement", 0.0)) >= 1.0
                    and img.get("hitl_split", "train") == "train"):
                out[img["id"]] = GoldTruth(image_id=img["id"], source="consensus", boxes=[
                    CorrectedBox(bbox=[float(v) for v in a["bbox"]], category_id=a["category_id"])
                    for a in labels.get(img["id"], []) if not a.get("iscrowd")])
    path = config.resolve(lab.gold)
    if path is None:
        return out
    try:
        gold = json.loads(Path(path).read_text(encoding="utf-8"))
        gold_images_ = gold["images"]
        gold_anns = gold.get("annotations", [])
        gold_cats = {int(c["id"]): str(c["name"]) for c in gold.get("categories", [])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"labeling.gold {path}: not a readable COCO file ({exc})") from None
    by_name = {img["file_name"]: img for img in coco["images"]}
    our_cats = {c["name"]: c["id"] for c in coco["categories"]}
    truth: dict[int, list[dict]] = {}
    for ann in gold_anns:
        truth.setdefault(ann["image_id"], []).append(ann)
    for g in gold_images_:
        # as stored (``<dataset>/<file>``), or as in the folder the dataset was imported from
        ours = by_name.get(g.get("file_name")) or by_name.get(
            f"{config.dataset.name}/{g.get('file_name')}")
        if ours is None:
            raise ConfigError(f"labeling.gold {path}: image {g.get('file_name')!r} is not in "
                              f"dataset {config.dataset.name!r}")
        if ours.get("hitl_split", "train") != "train":
            continue  # a pool image is labeled by the round itself; never score people on it
        boxes = []
        for ann in truth.get(g["id"], []):
            if ann.get("iscrowd"):
                continue
            name = gold_cats.get(int(ann["category_id"]))
            if name not in our_cats:
                raise ConfigError(f"labeling.gold {path}: annotation {ann.get('id')} has class "
                                  f"{name!r}, not one of the dataset's {sorted(our_cats)}")
            boxes.append(CorrectedBox(bbox=[float(v) for v in ann["bbox"]],
                                      category_id=our_cats[name]))
        out[ours["id"]] = GoldTruth(image_id=ours["id"], source="config", boxes=boxes)
    return {i: g for i, g in out.items() if i in images}


def move_off(bbox: list[float], width: int, height: int,
             rng: random.Random) -> list[float] | None:
    """The box moved by 45-60 % of its size so that its IoU with itself falls below 0.5."""
    x, y, w, h = bbox
    for _ in range(8):
        f = rng.uniform(0.45, 0.6)
        dx, dy = rng.choice(((f * w, 0.0), (-f * w, 0.0), (0.0, f * h), (0.0, -f * h)))
        nx = min(max(0.0, x + dx), max(0.0, width - w))
        ny = min(max(0.0, y + dy), max(0.0, height - h))
        moved = [round(nx, 3), round(ny, 3), w, h]
        if iou(moved, bbox) < 0.5:
            return moved
    return None


def _on_nothing(truth: list[list[float]], width: int, height: int,
                rng: random.Random) -> list[float] | None:
    sizes = sorted(b[2] * b[3] for b in truth) or [width * height * 0.04]
    side = max(4.0, sizes[len(sizes) // 2] ** 0.5)
    for _ in range(20):
        w, h = side * rng.uniform(0.8, 1.2), side * rng.uniform(0.8, 1.2)
        if w >= width or h >= height:
            return None
        box = [round(rng.uniform(0, width - w), 3), round(rng.uniform(0, height - h), 3),
               round(w, 3), round(h, 3)]
        if all(iou(box, t) < 0.1 for t in truth):
            return box
    return None


def plant_errors(truth: list[CorrectedBox], category_ids: list[int], width: int, height: int,
                 rng: random.Random, *, n_errors: int = 1
                 ) -> tuple[list[tuple[list[float], int]], list[dict]]:
    """The true boxes with ``n_errors`` known errors planted in them (kinds drawn at random
    among those the image allows).

    :return: ``(labels, planted)``: the pre-fill as ``(bbox, category_id)`` pairs, and what
        was planted (``kind``, ``category_id``, ``truth_bbox`` and/or ``bbox``).
    """
    labels = [([float(v) for v in b.bbox], int(b.category_id)) for b in truth]
    planted: list[dict] = []
    touched: set[int] = set()
    for _ in range(n_errors):
        kinds = [k for k in PLANTABLE if k == "spurious" or (
            len(touched) < len(labels) and (k != "class_swap" or len(category_ids) > 1))]
        rng.shuffle(kinds)
        for kind in kinds:
            free = [i for i in range(len(labels)) if i not in touched]
            if kind == "spurious":
                box = _on_nothing([b for b, _ in labels], width, height, rng)
                if box is None:
                    continue
                cat = rng.choice(category_ids)
                labels.append((box, cat))
                touched.add(len(labels) - 1)
                planted.append({"kind": kind, "bbox": box, "category_id": cat})
                break
            i = rng.choice(free)
            bbox, cat = labels[i]
            if kind == "missing":
                planted.append({"kind": kind, "truth_bbox": bbox, "category_id": cat})
                labels[i] = (bbox, -1)  # removed below, after the indices are no longer used
            elif kind == "class_swap":
                new = rng.choice([c for c in category_ids if c != cat])
                labels[i] = (bbox, new)
                planted.append({"kind": kind, "truth_bbox": bbox, "category_id": new,
                                "truth_category_id": cat})
            else:
                moved = move_off(bbox, width, height, rng)
                if moved is None:
                    continue
                labels[i] = (moved, cat)
                planted.append({"kind": kind, "truth_bbox": bbox, "bbox": moved,
                                "category_id": cat})
            touched.add(i)
            break
    return [(b, c) for b, c in labels if c != -1], planted


def mix_gold(manifest: SelectionManifest, config: PipelineConfig, coco: dict,
             scores_path: str | Path, *, seed: int | None = None,
             gold: dict[int, GoldTruth] | None = None) -> SelectionManifest:
    """Mix the round's gold tasks into the selection and mark the overlapped tasks.

    :param coco: the dataset version the round selected from.
    :param scores_path: the round's scores (the model's boxes of the gold images).
    :param seed: the draw of gold images, planted errors and overlapped tasks (default:
        ``selection.seed`` with the run id, so that each round plants anew).
    :param gold: the gold images (default: :func:`gold_images`); the selection left them out.
    """
    from hitl_plugin.model.score import aggregate, find_suspicions, read_scores

    lab, sel = config.labeling, config.selection
    rng = random.Random(f"{sel.seed if seed is None else seed}:{manifest.run_id}:gold")
    if gold is None:
        gold = gold_images(config, coco) if (lab.gold or lab.gold_from_consensus) else {}
    items = [s for s in manifest.items if s.image_id not in gold]
    if len(items) < len(manifest.items):
        log.info("%s selected image(s) are gold images: sent as gold tasks only",
                 len(manifest.items) - len(items))
    n_gold = 0
    if gold and items and lab.gold_fraction > 0:
        n_gold = min(len(gold), max(1, round(len(items) * lab.gold_fraction
                                             / (1.0 - lab.gold_fraction))))
    chosen = sorted(rng.sample(sorted(gold), n_gold))
    records = {}
    if chosen:
        wanted = set(chosen)
        records = {r.image_id: r for r in read_scores(scores_path) if r.image_id in wanted}
    images = {img["id"]: img for img in coco["images"]}
    current: dict[int, list[int]] = {}
    max_id = 0
    for ann in coco.get("annotations", []):
        current.setdefault(ann["image_id"], []).append(int(ann["id"]))
        max_id = max(max_id, int(ann["id"]))
    category_ids = sorted(c.id for c in manifest.categories)
    gold_items, truths = [], []
    for image_id in chosen:
        img, truth = images[image_id], gold[image_id]
        planted_labels, planted = plant_errors(
            truth.boxes, category_ids, int(img["width"]), int(img["height"]), rng,
            n_errors=rng.choice((1, 1, 2)))
        # the region ids a real review of this image would carry: its labels' ids, then new
        ids = list(current.get(image_id, []))
        while len(ids) < len(planted_labels):
            max_id += 1
            ids.append(max_id)
        labels = [LabelBox(id=ids[i], bbox=b, category_id=c)
                  for i, (b, c) in enumerate(planted_labels)]
        rec = records.get(image_id)
        preds = rec.predictions if rec is not None else []
        suspicions = sorted(find_suspicions(
            [lb.model_dump() for lb in labels], [p.model_dump() for p in preds], category_ids,
            conf=sel.conf, match_iou=sel.match_iou, bad_box_iou=sel.bad_box_iou),
            key=lambda s: -s.score)
        gold_items.append(SelectedSample(
            image_id=image_id, file_name=img["file_name"], width=int(img["width"]),
            height=int(img["height"]), split="train",
            reason="label_error" if suspicions else "audit",
            score=round(aggregate(suspicions), 6), suspicions=suspicions, predictions=preds,
            labels=labels, annotators=lab.annotators_per_task))
        truths.append(truth.model_copy(update={"planted": planted}))
    k = lab.annotators_per_task
    if k > 1 and lab.overlap > 0 and items:
        n_overlap = round(lab.overlap * len(items))
        overlapped = set(rng.sample(range(len(items)), n_overlap))
        items = [s.model_copy(update={"annotators": k}) if i in overlapped else s
                 for i, s in enumerate(items)]
    # gold spread evenly over the list, so that every batch of the fan-out gets its share
    total = len(items) + len(gold_items)
    n = len(gold_items)  # consecutive slots differ by total / n >= 1: all distinct
    slots = {int((i + 0.5) * total / n) for i in range(n)} if n else set()
    mixed, real, golden = [], iter(items), iter(gold_items)
    for position in range(total):
        mixed.append(next(golden) if position in slots else next(real))
    if gold_items:
        log.info("Gold: %s of %s gold image(s) mixed into %s task(s), %s planted error(s)",
                 len(gold_items), len(gold), total, sum(len(t.planted) for t in truths))
    return manifest.model_copy(update={"items": mixed, "gold": truths})
