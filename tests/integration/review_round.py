"""A small label-error review round against the real Label Studio, through the product's
own steps (submit, collect, merge): shared by the answer tests and the browser test."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hitl_plugin import steps
from hitl_plugin.config import parse_config
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.labeling.client import LabelStudioClient
from hitl_plugin.model.select import batches
from hitl_plugin.schemas import SelectedSample, SelectionManifest, write_json_atomic

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "star"}]
#: image id -> its labels (annotation id, bbox, category); image 9 is never selected
LABELS = {
    1: [(11, [10, 10, 30, 30], 1), (12, [60, 20, 20, 40], 2)],
    2: [(21, [5, 5, 40, 40], 1), (22, [50, 50, 30, 20], 3)],
    3: [(31, [20, 30, 25, 25], 2), (32, [70, 10, 20, 20], 3)],
    4: [(41, [15, 15, 30, 30], 3)],
    5: [(51, [30, 30, 40, 30], 1), (52, [5, 60, 20, 20], 2)],
    6: [(61, [10, 40, 30, 30], 2)],
    9: [(91, [1, 1, 10, 10], 1)],
}
W, H = 100, 80


@dataclass
class ReviewRound:
    rnd: steps.Round
    project: int
    tasks: dict[int, int]  # image id -> task id
    version: str


def review_round(label_studio, *, empty_answer: str = "reject", pool: bool = False,
                 images: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> ReviewRound:
    """A fresh dataset under the server's document root and a submitted round of ``images``,
    each chosen for a suspected class swap of its first label."""
    tag = f"rv{time.time_ns()}"
    root = Path(label_studio.root)
    folder = root / "images" / tag
    folder.mkdir(parents=True)
    coco = {"info": {}, "categories": CATS, "images": [], "annotations": []}
    # images beyond LABELS get one circle each
    labels_of = {**LABELS, **{i: [(i * 100 + 1, [10, 10, 30, 30], 1)] for i in images
                              if i not in LABELS}}
    for image_id, labels in labels_of.items():
        Image.new("RGB", (W, H), (90, 120, 150)).save(folder / f"{image_id}.png")
        coco["images"].append({"id": image_id, "file_name": f"{tag}/{image_id}.png",
                               "width": W, "height": H, "weight": 1.0,
                               "hitl_split": "train"})
        for ann_id, bbox, cat in labels:
            coco["annotations"].append({"id": ann_id, "image_id": image_id,
                                        "category_id": cat, "bbox": bbox,
                                        "area": bbox[2] * bbox[3], "iscrowd": 0,
                                        "source": "original"})
    if pool:
        Image.new("RGB", (W, H)).save(folder / "7.png")
        coco["images"].append({"id": 7, "file_name": f"{tag}/7.png", "width": W, "height": H,
                               "weight": 1.0, "hitl_split": "pool"})
    store = DatasetStore(root, tag)
    version = store.publish(coco, parent=None, round=0)
    config = parse_config({"dag_id": tag, "dataset": {"name": tag},
                           "labeling": {"empty_answer": empty_answer}})
    rnd = steps.Round(config, root, tag, "manual__review")
    items = []
    for image_id in images:
        labels = labels_of[image_id]
        first = labels[0]
        items.append(SelectedSample(
            image_id=image_id, file_name=f"{tag}/{image_id}.png", width=W, height=H,
            split="train", reason="label_error", score=0.8,
            labels=[{"id": a, "bbox": b, "category_id": c} for a, b, c in labels],
            suspicions=[{"kind": "class_swap", "score": 0.8, "label_ann_id": first[0],
                         "label_bbox": first[1], "label_category_id": first[2],
                         "pred_category_id": 3 if first[2] != 3 else 1,
                         "pred_bbox": first[1], "pred_score": 0.8}],
            predictions=[{"bbox": first[1], "category_id": 3 if first[2] != 3 else 1,
                          "score": 0.8}]))
    if pool:
        items.append(SelectedSample(
            image_id=7, file_name=f"{tag}/7.png", width=W, height=H, split="pool",
            reason="uncertainty", score=0.5,
            predictions=[{"bbox": [40, 40, 20, 20], "category_id": 2, "score": 0.6}]))
    selection = SelectionManifest(
        schema_version=1, dag_id=tag, run_id=rnd.run_id, dataset=tag, version=version,
        model_version="review-m1", categories=CATS, strategy="label_error",
        budget=len(items), seed=0, items=items)
    write_json_atomic(rnd.paths.selection, selection)
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        results = [steps.submit(rnd, client, batch=b)
                   for b in batches(len(items), 4, rnd.paths.selection)]
    tasks = {}
    for result in results:
        import json

        record = json.loads(Path(result["submission"]).read_text())
        tasks.update({int(k): v for k, v in record["tasks"].items()})
    return ReviewRound(rnd, results[0]["project_id"], tasks, version)


def starting_annotation(label_studio, round_: ReviewRound, image_id: int) -> list[dict]:
    """What the labeling view pre-fills for an image: the project's prediction set, all of it
    (the editable boxes, the model's read-only boxes and the suspicion texts)."""
    task = label_studio.api("GET", f"/api/tasks/{round_.tasks[image_id]}/")
    version = label_studio.api("GET", f"/api/projects/{round_.project}/")["model_version"]
    (chosen,) = [p for p in task["predictions"] if p["model_version"] == version]
    return [dict(r) for r in chosen["result"]]


def answer(label_studio, round_: ReviewRound, image_id: int, result: list[dict]) -> None:
    label_studio.api("POST", f"/api/tasks/{round_.tasks[image_id]}/annotations/",
                     json={"result": result, "was_cancelled": False, "lead_time": 3.0})


def collect_and_merge(label_studio, round_: ReviewRound) -> tuple[dict, dict, dict]:
    """Run the collect and merge steps; return (collect result, merge result, new COCO)."""
    rnd = round_.rnd
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        collected = steps.collect(rnd, client, selection=str(rnd.paths.selection),
                                  project_id=round_.project)
    merged = steps.merge(rnd, corrections=collected["corrections"],
                         base_version=round_.version)
    return collected, merged, rnd.store.load(merged["version"])
