"""``hitl bench rounds``: what people's labels are worth over several rounds of the loop.

R rounds of the product's own loop code, per strategy and seed: train (warm start from the
shipped base checkpoint) -> score (:func:`hitl_plugin.steps.score`) -> select
(:func:`hitl_plugin.steps.select`) -> SIMULATED people -> merge
(:func:`hitl_plugin.steps.merge`) -> train again. The simulated people are the review
simulator of ``hitl annotate-sim`` (:func:`hitl_dev.simulator.plan_review`): each one is
handed the editable boxes of the Label Studio task that the submit step builds
(:func:`hitl_plugin.labeling.tasks.to_task`; an image's current labels, or the model's boxes
for a pool image), edits them towards what the image shows, with seeded slips, and their
answer goes through the collect step's own validation
(:func:`hitl_plugin.labeling.collect.task_to_correction`). Only the HTTP hop to Label Studio
is left out (the integration tests cover it), so that thousands of reviews cost seconds.

Scenarios (``--scenario``):

- ``active``: a small clean labeled start (~7 % of the data, labeled by people before the
  first round, so stamped verified: no strategy re-reviews it), a large unlabeled pool with a
  long tail (5 classes, the fifth, ``hexagon``, about 5 % of objects and unknown to the base
  checkpoint; class imbalance; small, occluded and unusual-background images), ``B`` pool
  images labeled per round. Strategies: the shipped default selection, least-confidence,
  entropy, random. Reported: mAP50-95 on a clean held-out set (averaged over classes, as
  COCOeval does), the rare class apart, and the labels each strategy needs to reach
  random's final mAP (interpolated) as a ratio to random's.
- ``correction``: a labeled set with systematic errors (one vendor shifts every box of its
  images; one class consistently confused with another) plus random noise, R rounds at a
  fixed budget. Strategies: the shipped default, random, and cleanlab's ObjectLab at its
  defaults and at its best cut (chosen per seed with the injected-error list, i.e. an
  oracle cut in cleanlab's favour). Reported: the share of the mAP gap closed after each
  round, the gap running from the noisy-label model to the truth-trained model.

Every training is cached by content hash (labels and sampling weights of the training
images, hyperparameters and starting weights) under ``--work``, so a rerun after a scorer
change only retrains what changed.

stdout carries only the final JSON; progress goes to stderr. A PNG beside ``--out`` plots
mAP50-95 against images sent to people and against human boxes drawn or edited (mean and a
+/- std band over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hitl_dev.bench import run_in_work

log = logging.getLogger(__name__)

DATASET = "bench"
DAG_ID = "bench_rounds"
#: The simulated reviewers' accuracy: a careful person slips on 5 % of the boxes they fix.
REVIEWER_ACCURACY = 0.95


@dataclass(frozen=True)
class Scenario:
    """One scenario's data, rounds and strategies (the documented defaults)."""

    name: str
    synth: dict
    rounds: int
    budget: int
    strategies: dict[str, dict]
    #: epochs = max(min_epochs, ceil(passes / labeled images)): small sets get more epochs
    passes: int
    min_epochs: int
    imgsz: int = 96
    batch: int = 16
    #: warm-start each round from the promoted checkpoint, as the product's train step does
    #: (:func:`hitl_plugin.steps.warm_start`; promoted = the best held-out mAP so far, the
    #: gate's rule); False: every round from the base checkpoint (equal compute per round)
    chain: bool = False
    #: with ``chain``: which model the next round starts from and scores with: ``best``
    #: (the gate's rule, on the pipeline's held-out set) or ``latest`` (the last round's)
    follow: str = "best"
    extra: dict = field(default_factory=dict)


ACTIVE = Scenario(
    name="active",
    synth={"train": 40, "val": 200, "pool": 560, "classes": 5, "imgsz": 96, "noise": 0.0,
           "class_mix": [0.38, 0.25, 0.17, 0.14, 0.065],
           "tail": {"small": 0.08, "occluded": 0.08, "background": 0.06}},
    rounds=5, budget=40, passes=2400, min_epochs=10, chain=True,
    strategies={
        "default": {},
        "least_confidence": {"strategy": "uncertainty", "uncertainty": "least_confidence",
                             "audit_fraction": 0.0},
        "entropy": {"strategy": "uncertainty", "uncertainty": "entropy", "audit_fraction": 0.0},
        "random": {"strategy": "random"},
        # the shipped default plus auto-accept, its threshold calibrated on the held-out set
        # to the default target precision (0.99)
        "default+auto_accept": {"auto_accept": True},
        # the same at a looser target, to show what the 0.99 one costs in human boxes
        "default+auto_accept@0.95": {"auto_accept": True, "auto_accept_precision": 0.95},
    },
    extra={"rare_class": "hexagon", "start_verified": True},
)
CORRECTION = Scenario(
    name="correction",
    synth={"train": 400, "val": 200, "pool": 0, "classes": 4, "imgsz": 96, "noise": 0.05,
           "systematic": {"confusion": {"from": "triangle", "to": "star", "rate": 0.35},
                          "vendor": {"share": 0.4, "offset": [0.2, 0.15]}}},
    rounds=3, budget=40, passes=4800, min_epochs=12,
    strategies={
        "default": {},
        "random": {"strategy": "random"},
        "cleanlab_default": {"strategy": "label_error", "audit_fraction": 0.0,
                             "cleanlab": None},
        "cleanlab_best": {"strategy": "label_error", "audit_fraction": 0.0,
                          "cleanlab": "best"},
    },
    extra={"cleanlab_cuts": [0.2, 0.35, 0.5, 0.65, 0.8, 0.95]},
)
SCENARIOS = {s.name: s for s in (ACTIVE, CORRECTION)}


# -- pure helpers (unit-tested) -----------------------------------------------------------


def epochs_for(scenario: Scenario, n_images: int) -> int:
    return max(scenario.min_epochs, math.ceil(scenario.passes / max(n_images, 1)))


def x_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The smallest x at which the piecewise-linear curve ``(xs, ys)`` first reaches
    ``target`` (interpolated between the two points around the crossing); None if never."""
    for k, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if k == 0:
                return float(x)
            x0, y0 = xs[k - 1], ys[k - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0))
    return None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    arr = np.asarray(vals, dtype=float)
    return round(float(arr.mean()), 4), round(float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, 4)


def gap_closed(value: float, noisy: float, truth: float) -> float | None:
    gap = truth - noisy
    return None if abs(gap) < 1e-9 else round((value - noisy) / gap, 4)


def training_key(data_yaml: Path, settings: dict) -> str:
    """Content hash of a training: every training image's labels and sampling weight, the
    held-out labels, and the settings (epochs, size, seed, starting weights' digest)."""
    from hitl_plugin.dataset.export import read_weights

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    root = data_yaml.parent
    weights = read_weights(data_yaml)
    for split in ("train", "val"):
        for line in (root / split / f"{split}.txt").read_text().split():
            stem = Path(line).stem
            label = root / split / "labels" / f"{stem}.txt"
            digest.update(f"{split}:{stem}:{weights.get(line, 1.0)}\n".encode())
            digest.update(label.read_bytes())
    return digest.hexdigest()[:20]


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# -- one arm ------------------------------------------------------------------------------


class Trainer:
    """Trainings cached by content hash under ``cache``."""

    def __init__(self, cache: Path, scenario: Scenario, *, weights: Path | None,
                 threads: int, device: str) -> None:
        self.cache = cache
        self.scenario = scenario
        self.weights = weights
        self.weights_digest = file_digest(weights)
        self.threads = threads
        self.device = device
        self.trained = 0
        self.reused = 0
        self.seconds = 0.0

    def fit(self, data_yaml: Path, val_file: Path, *, seed: int, n_images: int,
            start: str | None = None, epochs: int | None = None) -> dict:
        """Train (or reuse) one model; ``start`` is the checkpoint to warm-start from
        (default: the trainer's starting weights); ``epochs`` overrides the scenario's."""
        from hitl_plugin.dataset.export import read_weights
        from hitl_plugin.model.evaluate import evaluate
        from hitl_plugin.model.train import train
        from hitl_plugin.paths import ModelPaths

        s = self.scenario
        epochs = epochs or epochs_for(s, n_images)
        weights = Path(start) if start else self.weights
        digest = file_digest(Path(start)) if start else self.weights_digest
        key = training_key(data_yaml, {"epochs": epochs, "imgsz": s.imgsz, "batch": s.batch,
                                       "seed": seed, "weights": digest})
        folder = self.cache / key
        done = folder / "bench_fit.json"
        if done.is_file():
            self.reused += 1
            return json.loads(done.read_text())
        began = time.monotonic()
        result = train(data_yaml, folder, weights=weights, epochs=epochs, imgsz=s.imgsz,
                       batch=s.batch, device=self.device, seed=seed, threads=self.threads,
                       adapt_threads=False, image_weights=read_weights(data_yaml),
                       extra_args={"val": False})
        metrics = evaluate(Path(result["checkpoint"]), data_yaml, val_file, ModelPaths(folder),
                           imgsz=s.imgsz, device=self.device)
        seconds = round(time.monotonic() - began, 1)
        out = {"key": key, "checkpoint": str(Path(result["checkpoint"]).absolute()),
               "epochs": epochs, "n_images": n_images, "seconds": seconds,
               "map50_95": metrics["map50_95"], "map50": metrics["map50"],
               "per_class": metrics["per_class"]}
        done.write_text(json.dumps(out, indent=1))
        self.trained += 1
        self.seconds += seconds
        log.info("trained %s: %s images, %s epochs, %.0f s, mAP50-95 %.4f", key, n_images,
                 epochs, seconds, metrics["map50_95"])
        return out


def _config(root: Path, overrides: dict, scenario: Scenario, seed: int, threads: int):
    from hitl_plugin.config import PipelineConfig

    selection = {k: v for k, v in overrides.items() if k not in ("cleanlab", "drift")}
    return PipelineConfig.model_validate({
        "dag_id": DAG_ID, "storage": {"root": str(root)}, "dataset": {"name": DATASET},
        "training": {"imgsz": scenario.imgsz, "batch": scenario.batch, "threads": threads,
                     "seed": seed},
        "selection": {**selection, "seed": seed},
        # the drift step only where an arm asks for it (these scenarios were measured
        # without it, and their pools do not drift)
        "drift": {"seed": seed, **overrides.get("drift", {"enabled": False})},
    })


def review(manifest, truth: dict, *, dag_id: str, run_id: str, seed: int,
           accuracy: float = REVIEWER_ACCURACY):
    """SIMULATED reviewers answer every selected image from the task the submit step builds.

    :return: ``(corrections, actions)``: the collect step's validated
        :class:`~hitl_plugin.schemas.Corrections`, and what the people did (Counter of the
        simulator's actions plus ``mistakes``).
    """
    from hitl_dev.simulator import _truth_index, plan_review, shown_view
    from hitl_plugin.labeling.collect import task_to_correction
    from hitl_plugin.labeling.tasks import to_task
    from hitl_plugin.schemas import ROUND_FILE_SCHEMA, Corrections, Rejected

    images, truth_boxes, categories = _truth_index(truth)
    names = {c.id: c.name for c in manifest.categories}
    by_name = {c.name: c.id for c in manifest.categories}
    samples = {s.image_id: s for s in manifest.items}
    items, rejected, actions = [], [], Counter()
    for n, sample in enumerate(manifest.items, start=1):
        task = to_task(sample, dag_id=dag_id, run_id=run_id,
                       model_version=manifest.model_version, names=names)
        _, start = shown_view(task, manifest.model_version)
        rng = random.Random(f"{seed}:{run_id}:{sample.image_id}")
        regions, _, mistakes, done = plan_review(
            images[sample.image_id], start, truth_boxes.get(sample.image_id, []), categories,
            rng, accuracy)
        actions.update(done)
        actions["mistakes"] += len(mistakes)
        answer = {"id": n, "result": regions, "was_cancelled": False,
                  "completed_by": {"email": "simulated-reviewer@bench"},
                  "created_at": "2026-01-01T00:00:00Z"}
        found = task_to_correction({"id": n, "data": task["data"], "annotations": [answer]},
                                   dag_id=dag_id, run_id=run_id, samples=samples,
                                   categories=by_name, empty_answer="no_objects")
        if isinstance(found, Rejected):
            rejected.append(found)
        elif found is not None:
            items.append(found)
    corrections = Corrections(schema_version=ROUND_FILE_SCHEMA, dag_id=dag_id, run_id=run_id,
                              dataset=manifest.dataset, version=manifest.version,
                              items=sorted(items, key=lambda c: c.image_id), rejected=rejected)
    return corrections, actions


def auto_accept_errors(manifest, truth_by_image: dict[int, list[dict]],
                       rare: str | None) -> dict:
    """The round's auto-accepted boxes against the truth: a box is wrong when no true box of
    its class overlaps it at IoU >= 0.5. The rare class is counted apart."""
    from hitl_plugin.boxes import iou

    rare_id = next((c.id for c in manifest.categories if c.name == rare), None)
    out = {"threshold": manifest.auto_accept.threshold, "source": manifest.auto_accept.source,
           "held_out_precision": manifest.auto_accept.held_out_precision,
           "images": len(manifest.auto_accepted), "boxes": 0, "wrong": 0,
           "rare_boxes": 0, "rare_wrong": 0, "missed_true_boxes": 0}
    for a in manifest.auto_accepted:
        truth = truth_by_image.get(a.image_id, [])
        for b in a.boxes:
            ok = any(t["category_id"] == b.category_id and iou(t["bbox"], b.bbox) >= 0.5
                     for t in truth)
            out["boxes"] += 1
            out["wrong"] += not ok
            if b.category_id == rare_id:
                out["rare_boxes"] += 1
                out["rare_wrong"] += not ok
        # objects in an auto-labeled image that no accepted box covers (the model missed)
        out["missed_true_boxes"] += sum(
            1 for t in truth if not any(t["category_id"] == b.category_id
                                        and iou(t["bbox"], b.bbox) >= 0.5 for b in a.boxes))
    return out


def human_boxes(actions: Counter) -> int:
    """Boxes a person drew or edited (added, redrawn, relabeled); deletions apart."""
    return int(actions["added"] + actions["redrawn"] + actions["relabeled"])


def _objectlab_inputs(scores: Path, coco: dict, root: Path, checkpoint: str, *, imgsz: int,
                      threads: int, device: str) -> tuple[list[int], list, list]:
    """ObjectLab's inputs for the labeled images: their labels and the model's boxes down to
    the scorer's low floor (one prediction pass, whatever the cuts tried on it)."""
    from hitl_dev.bench.selection import objectlab_inputs
    from hitl_plugin.model.score import LOW_CONF, predict_stream
    from hitl_plugin.paths import Layout

    layout = Layout.at(root)
    index = {c: i for i, c in enumerate(sorted(c["id"] for c in coco["categories"]))}
    train = [img for img in coco["images"] if img.get("hitl_split") == "train"]
    labels: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        labels.setdefault(ann["image_id"], []).append(ann)
    by_path = {str(layout.image_path(img["file_name"]).resolve()): img for img in train}
    lst = scores.with_name("cleanlab_images.txt")
    lst.write_text("\n".join(by_path) + "\n")
    ids, cl_labels, cl_preds = [], [], []
    for path, boxes in predict_stream(checkpoint, lst, imgsz=imgsz, device=device,
                                      conf=LOW_CONF, threads=threads):
        img = by_path[str(Path(path).resolve())]
        label, per_class = objectlab_inputs(labels.get(img["id"], []), boxes, index)
        ids.append(img["id"])
        cl_labels.append(label)
        cl_preds.append(per_class)
    return ids, cl_labels, cl_preds


def _objectlab_quality(inputs: tuple[list[int], list, list], cut: float | None
                       ) -> dict[int, float]:
    from hitl_dev.bench.selection import cleanlab_scores

    ids, cl_labels, cl_preds = inputs
    return {i: float(q) for i, q in
            zip(ids, cleanlab_scores(cl_labels, cl_preds, high_probability=cut))}


def _cleanlab_rescore(scores: Path, quality: dict[int, float]) -> None:
    """Replace each labeled image's ``label_error_score`` by 1 - ObjectLab's label quality."""
    from hitl_plugin.schemas import ImageScore

    lines = []
    for line in scores.read_text().splitlines():
        rec = ImageScore.model_validate_json(line)
        if rec.image_id in quality:
            rec = rec.model_copy(update={"label_error_score": 1.0 - quality[rec.image_id]})
        lines.append(rec.model_dump_json())
    scores.write_text("\n".join(lines) + "\n")


def best_cleanlab_cut(inputs: tuple[list[int], list, list], wrong: set[int], budget: int,
                      cuts: list[float]) -> tuple[float, dict]:
    """The ObjectLab cut whose top ``budget`` images hold the most injected errors (an
    oracle choice, in cleanlab's favour)."""
    found = {}
    for cut in cuts:
        quality = _objectlab_quality(inputs, cut)
        ranked = sorted(quality, key=lambda i: (quality[i], i))  # worst labels first
        found[cut] = sum(1 for i in ranked[:budget] if i in wrong) / max(budget, 1)
    best = max(cuts, key=lambda c: (found[c], -abs(c - 0.5)))
    return best, {str(c): round(v, 4) for c, v in found.items()}


def run_arm(scenario: Scenario, strategy: str, seed: int, data: Path, work: Path,
            trainer: Trainer, *, threads: int, device: str, evaluate_also=None) -> dict:
    """R rounds of one strategy on one seed's data; return its curve.

    With the arm's ``drift`` config enabled, the drift step runs between score and select,
    as in the DAG. ``evaluate_also(fit)``: more numbers for each round's point (e.g. the
    mAP on another held-out set).
    """
    from hitl_plugin import steps
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.schemas import SelectionManifest, read_model, write_json_atomic

    overrides = scenario.strategies[strategy]
    root = work / f"seed{seed}" / strategy
    shutil.rmtree(root, ignore_errors=True)  # every run starts from the source; trainings
    config = _config(root, overrides, scenario, seed, threads)  # stay cached apart
    store = DatasetStore(root, DATASET)
    store.import_source(data)
    truth = _truth(data)
    wrong = _wrong_images(data)
    rare = scenario.extra.get("rare_class")
    curve: list[dict] = []
    sent = scenario.synth["train"] if scenario.name == "active" else 0
    boxes_total, reviewed_errors = 0, 0
    cut_info = None
    promoted: dict | None = None  # the best model so far (chained scenarios start from it)
    for r in range(scenario.rounds + 1):
        rnd = steps.Round(config, root, DAG_ID, f"round{r}")
        version = store.require_latest()
        coco = store.load(version)
        n_train = sum(1 for i in coco["images"] if i.get("hitl_split") == "train")
        data_yaml, val_file = _export(root, version, coco)
        fit = trainer.fit(data_yaml, val_file, seed=seed, n_images=n_train,
                          start=promoted["checkpoint"] if scenario.chain and promoted else None,
                          epochs=scenario.extra.get("first_epochs") if r == 0 else None)
        if promoted is None or fit["map50_95"] > promoted["map50_95"] or (
                scenario.follow == "latest"):
            promoted = fit
        point = {"round": r, "version": version, "labeled_images": n_train,
                 "images_to_people": sent, "human_boxes": boxes_total,
                 "map50_95": fit["map50_95"], "map50": fit["map50"],
                 "per_class": fit["per_class"], "training": fit["key"],
                 "promoted_map50_95": promoted["map50_95"],
                 "train_seconds": fit["seconds"]}
        if rare:
            point["rare_ap"] = fit["per_class"].get(rare)
        if evaluate_also is not None:
            point.update(evaluate_also(fit))
        if scenario.name == "correction":
            point["errors_fixed_images"] = reviewed_errors
        curve.append(point)
        log.info("[%s seed %s %s] round %s: %s labeled, %s to people, %s human boxes, "
                 "mAP50-95 %.4f", scenario.name, seed, strategy, r, n_train, sent,
                 boxes_total, fit["map50_95"])
        if r == scenario.rounds:
            break
        # the gate's rule: the round goes on with the promoted checkpoint
        scored = steps.score(rnd, checkpoint=promoted["checkpoint"], version=version,
                             imgsz=scenario.imgsz)
        if "cleanlab" in overrides:
            cut = overrides["cleanlab"]
            inputs = _objectlab_inputs(Path(scored["scores"]), coco, root,
                                       promoted["checkpoint"], imgsz=scenario.imgsz,
                                       threads=threads, device=device)
            if cut == "best":
                if cut_info is None:  # chosen once per seed, on the first round
                    best, by_cut = best_cleanlab_cut(inputs, wrong, scenario.budget,
                                                     scenario.extra["cleanlab_cuts"])
                    cut_info = {"cut": best, "precision_by_cut": by_cut}
                cut = cut_info["cut"]
            _cleanlab_rescore(Path(scored["scores"]), _objectlab_quality(inputs, cut))
        drift = None
        if config.drift.enabled:
            drift = steps.drift(rnd, scores=scored["scores"], version=version,
                                model_version=promoted["checkpoint"])
        selected = steps.select(rnd, scores=scored["scores"], version=version,
                                model_version=promoted["checkpoint"], budget=scenario.budget,
                                drift=drift["drift"] if drift else None)
        manifest = read_model(SelectionManifest, selected["selection"])
        if drift is not None:
            point["drift"] = {"verdict": drift["verdict"], "p_values": drift["p_values"],
                              "budget": manifest.budget,
                              "reserved": manifest.drift.reserved if manifest.drift else 0}
        picked = [s.image_id for s in manifest.items]
        point["selected"] = {"n": len(picked), "by_reason": selected["by_reason"],
                             "pool": sum(1 for s in manifest.items if s.split == "pool"),
                             "with_injected_errors": sum(1 for i in picked if i in wrong)}
        if rare:
            rare_id = next(c.id for c in manifest.categories if c.name == rare)
            point["selected"]["with_rare_class"] = sum(
                1 for i in picked if any(a["category_id"] == rare_id
                                         for a in truth["by_image"].get(i, [])))
        corrections, actions = review(manifest, truth["coco"], dag_id=DAG_ID,
                                      run_id=rnd.run_id, seed=seed)
        if manifest.auto_accept is not None:
            from hitl_plugin.labeling.collect import with_auto_accepted

            corrections = with_auto_accepted(corrections, manifest)
            point["auto_accept"] = auto_accept_errors(manifest, truth["by_image"], rare)
            point["auto_accept"]["accepted_changed_by_people"] = sum(
                c.accepted_changed for c in corrections.items)
        write_json_atomic(rnd.paths.corrections, corrections)
        steps.merge(rnd, corrections=str(rnd.paths.corrections), base_version=version)
        point["people"] = dict(actions)
        sent += len(picked)
        boxes_total += human_boxes(actions)
        reviewed_errors += point["selected"]["with_injected_errors"]
    out = {"strategy": strategy, "seed": seed, "curve": curve}
    if cut_info:
        out["cleanlab_cut"] = cut_info
    return out


def _export(root: Path, version: str, coco: dict) -> tuple[Path, Path]:
    from hitl_plugin.dataset.export import export_yolo
    from hitl_plugin.paths import Layout

    val_file = Layout.at(root).val_file(DATASET)
    return export_yolo(root, DATASET, version, coco, json.loads(val_file.read_text())), val_file


def _truth(data: Path) -> dict:
    from hitl_dev.synth import load_truth

    coco = load_truth(data)
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    return {"coco": coco, "by_image": by_image}


def _wrong_images(data: Path) -> set[int]:
    report = json.loads((data / "noise_report.json").read_text())
    return {e["image_id"] for e in report["errors"]}


def make_data(scenario: Scenario, seed: int, work: Path) -> Path:
    """The scenario's synthetic data for one seed (made once; its own seed)."""
    from hitl_dev.synth import generate

    out = work / "data" / f"{scenario.name}-seed{seed}"
    done = out / ".bench_done"
    if not done.is_file():
        shutil.rmtree(out, ignore_errors=True)
        summary = generate(out, seed=seed, **scenario.synth)
        if scenario.extra.get("start_verified"):
            # the labeled start was labeled by people before the first round: verified, so
            # no strategy spends the budget on reviewing it again
            path = out / "annotations" / "train.json"
            coco = json.loads(path.read_text())
            for img in coco["images"]:
                img["hitl_verified_round"] = 0
            path.write_text(json.dumps(coco, indent=1))
        done.write_text(json.dumps(summary, indent=1))
    return out


# -- summaries ----------------------------------------------------------------------------


def summarize_active(arms: list[dict], seeds: list[int]) -> dict:
    """Labels to reach random's final mAP, per strategy, as a ratio to random's."""
    per: dict[str, dict] = {}
    by = {(a["strategy"], a["seed"]): a["curve"] for a in arms}
    strategies = sorted({a["strategy"] for a in arms})
    for name in strategies:
        ratios, acquired, finals, rare_finals, reached = [], [], [], [], 0
        for seed in seeds:
            curve, rand = by.get((name, seed)), by.get(("random", seed))
            if not curve or not rand:
                continue
            target = rand[-1]["map50_95"]
            xs = [p["images_to_people"] for p in curve]
            need = x_to_reach(xs, [p["map50_95"] for p in curve], target)
            base = rand[-1]["images_to_people"]
            start = rand[0]["images_to_people"]
            finals.append(curve[-1]["map50_95"])
            rare_finals.append(curve[-1].get("rare_ap"))
            if need is None:  # not reached within the rounds: at least the last point
                need = xs[-1]
            else:
                reached += 1
            ratios.append(need / base)
            acquired.append((need - start) / max(base - start, 1))
        ratio, ratio_std = mean_std(ratios)
        acq, acq_std = mean_std(acquired)
        final, final_std = mean_std(finals)
        rare, rare_std = mean_std(rare_finals)
        per[name] = {"label_ratio_to_random": ratio, "label_ratio_std": ratio_std,
                     "acquired_label_ratio": acq, "acquired_label_ratio_std": acq_std,
                     "reached_random_final_in_seeds": reached, "per_seed_ratio": ratios,
                     "final_map50_95": final, "final_map50_95_std": final_std,
                     "final_rare_ap": rare, "final_rare_ap_std": rare_std}
    d = per.get("default", {})
    out = {"active": {"label_ratio_to_random": d.get("label_ratio_to_random"),
                      "label_ratio_std": d.get("label_ratio_std"), "seeds": len(seeds)},
           "strategies": per}
    if any(a["strategy"] == "default+auto_accept" for a in arms):
        out["auto_accept"] = summarize_auto_accept(by, seeds)
    if any(a["strategy"] == "default+auto_accept@0.95" for a in arms):
        out["auto_accept_at_0.95"] = summarize_auto_accept(by, seeds,
                                                           "default+auto_accept@0.95")
    return out


def summarize_auto_accept(by: dict, seeds: list[int],
                          arm: str = "default+auto_accept") -> dict:
    """Human boxes saved by auto-accept for the same mAP, and the errors it adds.

    Per seed, the target is the lower of the two arms' final mAP50-95 (a level both reach);
    the human boxes each arm needed to first reach it are interpolated on its curve
    (cumulative human boxes against mAP), and ``saved = 1 - with / without``.
    """
    saved, error_rates, per_seed = [], [], []
    boxes = wrong = rare_boxes = rare_wrong = missed = 0
    for seed in seeds:
        plain, auto = by.get(("default", seed)), by.get((arm, seed))
        if not plain or not auto:
            continue
        target = min(plain[-1]["map50_95"], auto[-1]["map50_95"])
        need = [x_to_reach([p["human_boxes"] for p in c], [p["map50_95"] for p in c], target)
                for c in (plain, auto)]
        stats = [p["auto_accept"] for p in auto if p.get("auto_accept")]
        b = sum(s["boxes"] for s in stats)
        w = sum(s["wrong"] for s in stats)
        boxes, wrong = boxes + b, wrong + w
        rare_boxes += sum(s["rare_boxes"] for s in stats)
        rare_wrong += sum(s["rare_wrong"] for s in stats)
        missed += sum(s["missed_true_boxes"] for s in stats)
        value = 1.0 - need[1] / need[0] if need[0] else None
        saved.append(value)
        error_rates.append(w / b if b else None)
        per_seed.append({"seed": seed, "target_map50_95": target,
                         "human_boxes_without": need[0], "human_boxes_with": need[1],
                         "saved_fraction": None if value is None else round(value, 4),
                         "auto_boxes": b, "auto_wrong": w,
                         "final_human_boxes": [plain[-1]["human_boxes"],
                                               auto[-1]["human_boxes"]],
                         "final_map50_95": [plain[-1]["map50_95"], auto[-1]["map50_95"]]})
    m, s = mean_std(saved)
    return {"human_boxes_saved_fraction": m, "human_boxes_saved_std": s,
            "box_error_rate_added": round(wrong / boxes, 4) if boxes else None,
            "box_error_rate_per_seed": [None if v is None else round(v, 4)
                                        for v in error_rates],
            "auto_accepted_boxes": boxes, "auto_accepted_wrong": wrong,
            "rare_class_boxes": rare_boxes, "rare_class_wrong": rare_wrong,
            "rare_class_error_rate": round(rare_wrong / rare_boxes, 4) if rare_boxes else None,
            "true_boxes_missed_in_auto_images": missed,
            "seeds": len(per_seed), "per_seed": per_seed}


def summarize_correction(arms: list[dict], seeds: list[int], noisy: dict[int, float],
                         truth: dict[int, float], rounds: int) -> dict:
    per: dict[str, dict] = {}
    for name in sorted({a["strategy"] for a in arms}):
        closed_by_round: list[list[float]] = [[] for _ in range(rounds + 1)]
        for a in arms:
            if a["strategy"] != name or a["seed"] not in truth:
                continue
            for p in a["curve"]:
                p["gap_closed"] = gap_closed(p["map50_95"], noisy[a["seed"]], truth[a["seed"]])
                closed_by_round[p["round"]].append(p["gap_closed"])
        rows = [mean_std(v) for v in closed_by_round]
        per[name] = {"gap_closed_mean": [m for m, _ in rows],
                     "gap_closed_std": [s for _, s in rows],
                     "gap_closed_per_seed": closed_by_round}
    at = min(3, rounds)

    def after(name: str) -> float | None:
        return per.get(name, {}).get("gap_closed_mean", [None] * (at + 1))[at]

    gain_in_std = None
    if "default" in per and "random" in per:
        sd = [per[n]["gap_closed_std"][at] or 0.0 for n in ("default", "random")]
        pooled = math.sqrt((sd[0] ** 2 + sd[1] ** 2) / 2)
        if after("default") is not None and after("random") is not None and pooled > 0:
            gain_in_std = round((after("default") - after("random")) / pooled, 3)
    return {"correction": {"gap_closed_after_3": {n: after(n) for n in
                                                  ("default", "random", "cleanlab_default",
                                                   "cleanlab_best")},
                           "gain_in_std": gain_in_std, "seeds": len(seeds)},
            "strategies": per}


# -- the plot -----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name in sorted({a["strategy"] for a in arms}):
        curves = [a["curve"] for a in arms if a["strategy"] == name]
        n = min(len(c) for c in curves)
        y = np.array([[c[k]["map50_95"] for k in range(n)] for c in curves])
        for ax, key in zip(axes, ("images_to_people", "human_boxes")):
            x = np.array([[c[k][key] for k in range(n)] for c in curves]).mean(axis=0)
            mean, std = y.mean(axis=0), (y.std(axis=0, ddof=1) if len(y) > 1 else 0 * y[0])
            ax.plot(x, mean, marker="o", label=f"{name} (n={len(curves)})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.18)
    scenario = result["scenario"]
    if scenario == "correction":
        for seed_line in ("noisy", "truth"):
            vals = [v for v in result[f"map50_95_{seed_line}"].values()]
            for ax in axes:
                ax.axhline(float(np.mean(vals)), ls="--", lw=1, color="grey")
                ax.text(ax.get_xlim()[0], float(np.mean(vals)), f" {seed_line} labels",
                        va="bottom", fontsize=8, color="grey")
    axes[0].set_xlabel("images sent to people (cumulative"
                       + (", incl. the labeled start)" if scenario == "active" else ")"))
    axes[1].set_xlabel("human boxes drawn or edited (cumulative)")
    axes[0].set_ylabel("mAP50-95, clean held-out set")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"hitl bench rounds --scenario {scenario}: mean +/- std over "
                 f"{len(result['seeds'])} seeds (SIMULATED reviewers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------


def run(scenario: Scenario, seeds: list[int], work: Path, *, weights: Path | None,
        threads: int = 2, device: str = "auto", strategies: list[str] | None = None,
        on_progress=None) -> dict:
    from hitl_plugin.model.train import BUILTIN_BASE

    started = time.monotonic()
    weights = weights if weights is not None else BUILTIN_BASE
    trainer = Trainer(work / "trainings", scenario, weights=weights, threads=threads,
                      device=device)
    names = strategies or list(scenario.strategies)
    arms: list[dict] = []
    noisy, truth = {}, {}
    result = {"scenario": scenario.name, "seeds": seeds, "simulated_people": True,
              "reviewer_accuracy": REVIEWER_ACCURACY, "complete": False,
              "settings": {"synth": scenario.synth, "rounds": scenario.rounds,
                           "budget_per_round": scenario.budget, "imgsz": scenario.imgsz,
                           "epochs": f"max({scenario.min_epochs}, ceil({scenario.passes} / "
                           "labeled images))", "weights": str(weights),
                           "strategies": {n: scenario.strategies[n] for n in names}},
              "arms": arms}
    for seed in seeds:
        data = make_data(scenario, seed, work)
        result.setdefault("data", {})[str(seed)] = json.loads(
            (data / ".bench_done").read_text())
        if scenario.name == "correction":  # the two ends of the gap
            truth_src = _truth_source(data, work / "data" / f"correction-seed{seed}-truth")
            t_arm = run_arm(dataclasses.replace(scenario, rounds=0), "default", seed,
                            truth_src, work / "truth", trainer, threads=threads, device=device)
            truth[seed] = t_arm["curve"][0]["map50_95"]
        for name in names:
            arm = run_arm(scenario, name, seed, data, work, trainer, threads=threads,
                          device=device)
            arms.append(arm)
            if scenario.name == "correction":
                noisy[seed] = arm["curve"][0]["map50_95"]
            result["trainings"] = {"trained": trainer.trained, "reused": trainer.reused,
                                   "train_seconds": round(trainer.seconds, 1)}
            if on_progress:
                on_progress(result)
    if scenario.name == "active":
        result["summary"] = summarize_active(arms, seeds)
    else:
        result["map50_95_noisy"] = {str(k): v for k, v in noisy.items()}
        result["map50_95_truth"] = {str(k): v for k, v in truth.items()}
        result["summary"] = summarize_correction(arms, seeds, noisy, truth, scenario.rounds)
        result["summary"]["label_error_precision_round1"] = _round1_precision(arms)
    result["complete"] = True
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _round1_precision(arms: list[dict]) -> dict:
    out = {}
    for name in sorted({a["strategy"] for a in arms}):
        vals = [a["curve"][0]["selected"]["with_injected_errors"] / a["curve"][0]["selected"]["n"]
                for a in arms if a["strategy"] == name and a["curve"][0].get("selected")]
        m, s = mean_std(vals)
        out[name] = {"mean": m, "std": s, "per_seed": [round(v, 4) for v in vals]}
    return out


def _truth_source(data: Path, out: Path) -> Path:
    """A copy of the scenario's source with the true labels (images linked)."""
    if (out / ".bench_done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "annotations").mkdir(parents=True)
    os.symlink(data / "images", out / "images")
    for name in ("val", "pool", "pool_truth", "train_truth"):
        src = data / "annotations" / f"{name}.json"
        if src.is_file():
            shutil.copy(src, out / "annotations" / src.name)
    shutil.copy(data / "annotations" / "train_truth.json", out / "annotations" / "train.json")
    (out / "noise_report.json").write_text(json.dumps({"errors": []}))
    (out / ".bench_done").write_text("{}")
    return out


def main(argv: list[str], prog: str = "hitl bench rounds") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON here too, and the plot beside it (.png)")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder with the training cache (default: a temporary "
                        "one, removed at the end); reuse it to rerun in minutes")
    parser.add_argument("--strategies", default=None, help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="builtin",
                        help="starting weights: builtin (the shipped base checkpoint) or a .pt")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    scenario = SCENARIOS[args.scenario]
    strategies = None
    if args.strategies:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        unknown = sorted(set(strategies) - set(scenario.strategies))
        if unknown:
            parser.error(f"unknown strategies {unknown} for --scenario {scenario.name}; "
                         f"use {', '.join(scenario.strategies)}")
        if scenario.name == "active" and "random" not in strategies:
            strategies.append("random")  # the ratios are to random's labels
    if scenario.name == "correction" and (strategies is None or any(
            s.startswith("cleanlab") for s in strategies)):
        from hitl_dev.bench.selection import _import_cleanlab

        _import_cleanlab()  # fail before an hour of training, not after
    weights = None if args.weights == "builtin" else Path(args.weights)
    if weights is not None and not weights.is_file():
        parser.error(f"--weights {args.weights}: no such file")
    seeds = list(range(args.seed, args.seed + args.seeds))
    return run_in_work(
        args.work, args.out, prefix="hitl-bench-rounds-", plot=plot,
        compute=lambda work, progress: run(scenario, seeds, work, weights=weights,
                                           threads=args.threads, device=args.device,
                                           strategies=strategies, on_progress=progress))
