"""Out-of-sample scoring (``selection.out_of_sample_folds``): each labeled image is scored by
a model that did not train on it, as cleanlab recommends for finding label errors.

The labeled images are split into ``k`` folds (by a hash of the image id and the training
seed, so a fold keeps its images from round to round). For each fold a model is trained on
the other ``k - 1`` folds, starting from ``model.base_checkpoint`` (never the promoted
checkpoint: it has seen every labeled image), with the round's training settings, and
scores the fold's images. Pool images are scored by the round's own checkpoint. The result
is the same ``scores.jsonl`` as an in-sample score step, so selection is unchanged.

Cost: ``k`` trainings on ``(k - 1) / k`` of the labeled images, per round. Each fold model
trains in its own folder under the round's model folder, so a retried score step resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hitl_plugin.steps import Round

log = logging.getLogger(__name__)


def fold_of(image_id: int, k: int, seed: int = 0) -> int:
    """The fold (0..k-1) of an image: stable across rounds and processes."""
    digest = hashlib.sha256(f"{int(seed)}:{int(image_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % int(k)


def _subset(coco: dict, image_ids: set[int]) -> dict:
    return {**coco, "images": [i for i in coco["images"] if i["id"] in image_ids],
            "annotations": [a for a in coco.get("annotations", [])
                            if a["image_id"] in image_ids]}


def score_out_of_sample(rnd: Round, *, checkpoint: str, coco: dict, version: str, k: int,
                        imgsz: int, base_weights: str | None,
                        drift_out: Path | None = None) -> dict:
    """Score ``coco``'s labeled images out of sample and its pool with ``checkpoint``.

    :param drift_out: the drift step's inputs, kept while ``checkpoint`` scores the pool
        (with the held-out set in the same pass).

    :return: like :func:`~hitl_plugin.model.score.score_images`, plus ``fold_seconds`` (the
        trainings' wall time) and ``folds`` (images per fold).
    """
    from hitl_plugin.dataset.export import export_yolo, read_weights
    from hitl_plugin.model.score import score_images
    from hitl_plugin.model.train import train as train_model

    if k < 2:
        raise ValueError(f"selection.out_of_sample_folds must be at least 2, got {k}")
    started = time.monotonic()
    t, sel = rnd.config.training, rnd.config.selection
    labeled = [i["id"] for i in coco["images"] if i.get("hitl_split", "train") == "train"]
    pool = {i["id"] for i in coco["images"] if i.get("hitl_split") == "pool"}
    folds = [{i for i in labeled if fold_of(i, k, t.seed) == f} for f in range(k)]
    val = json.loads(rnd.layout.val_file(rnd.config.dataset.name).read_text(encoding="utf-8"))
    parts: list[Path] = []
    train_seconds = 0.0
    for f, held in enumerate(folds):
        if not held:
            continue
        model = rnd.paths.model(f"fold{f}of{k}")
        rest = set(labeled) - held
        data_yaml = export_yolo(rnd.root, rnd.config.dataset.name, f"{version}-fold{f}of{k}",
                                _subset(coco, rest), val, out=model.dir / "export")
        began = time.monotonic()
        log.info("Out-of-sample fold %s/%s: training on %s labeled images, scoring %s", f + 1,
                 k, len(rest), len(held))
        result = train_model(data_yaml, model.dir, architecture=rnd.config.model.architecture,
                             weights=base_weights, epochs=t.epochs, imgsz=t.imgsz,
                             batch=t.batch, device=t.device, threads=t.threads, seed=t.seed,
                             image_weights=read_weights(data_yaml), extra_args={"val": False})
        train_seconds += time.monotonic() - began
        part = rnd.paths.dir / f".scores.fold{f}.jsonl"
        score_images(result["checkpoint"], _subset(coco, held), rnd.root, part, selection=sel,
                     imgsz=imgsz, device=t.device, threads=t.threads, splits=("train",))
        parts.append(part)
    drift = {}
    if pool or drift_out is not None:  # the drift inputs hold the held-out set even then
        part = rnd.paths.dir / ".scores.pool.jsonl"
        scored = score_images(checkpoint, _subset(coco, pool), rnd.root, part, selection=sel,
                              imgsz=imgsz, device=t.device, threads=t.threads,
                              splits=("pool",), drift_out=drift_out,
                              reference=val if drift_out is not None else None)
        drift = {"drift_inputs": scored["drift_inputs"]} if "drift_inputs" in scored else {}
        parts.append(part)
    out = rnd.paths.scores
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for part in parts:
            for line in part.read_text(encoding="utf-8").splitlines():
                fh.write(line + "\n")
                n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    for part in parts:
        part.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    log.info("Scored %s images out of sample (%s folds) in %.0f s, %.0f s of it training",
             n, k, seconds, train_seconds)
    return {"scores": str(out), "n_images": n, "seconds": round(seconds, 2),
            "fold_seconds": round(train_seconds, 2), "folds": [len(f) for f in folds], **drift}
