"""``hitl bench selection``: how well label-error selection finds wrong labels, and what fixing
them is worth, against a random draw and cleanlab's ObjectLab.

On a dataset written by ``hitl synth`` (whose injected errors are listed in
``noise_report.json``):

1. import it into a temporary storage root (``DatasetStore.import_source``);
2. train on the noisy labels and evaluate on the clean val set (``map50_95_before``);
3. predict once over the training images and score them (our suspicions, and the same
   predictions handed to ObjectLab);
4. for each strategy select the budget, count the hits (an image is a true hit when it holds
   at least one injected error): ``label_error_precision`` and ``label_error_recall``; also
   ``errors_fixed`` (injected errors on the selected images, which the oracle corrects) and
   ``error_recall`` (their share of all injected errors);
5. unless ``--no-retrain``: replace the selected images' labels by ``train_truth.json`` (an
   oracle annotator), retrain from the same starting weights, evaluate
   (``map50_95_after``); train once on the truth (``map50_95_truth``);
   ``gap_recovered = (after - before) / (truth - before)``.

Strategies: ``ours`` (``label_error`` selection), ``random`` (a seeded uniform draw) and
``cleanlab``, i.e. ``cleanlab.object_detection.rank.get_label_quality_scores`` on the same
predictions, reported twice: with its public defaults (``cleanlab_default``), whose
overlooked/swap checks only use boxes with probability >= 0.95, and with that cut at 0.5
(``cleanlab_p05``), which suits YOLO scores (they rarely reach 0.95).

cleanlab is AGPL and only a benchmark dependency: it is imported here, lazily, and never by
the runtime package. Install it with ``.venv/bin/pip install cleanlab==2.9.0`` (or set
``HITL_CLEANLAB_PATH`` to a folder holding it and its dependencies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hitl_plugin.config import SelectionConfig
from hitl_plugin.dataset.export import export_yolo
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.model.score import LOW_CONF, predict_stream, score_record
from hitl_plugin.model.select import resolve_budget, select_samples
from hitl_plugin.paths import Layout, ModelPaths

log = logging.getLogger(__name__)

DATASET = "bench"
STRATEGIES = ("ours", "random", "cleanlab")
CLEANLAB_HINT = (
    "cleanlab is not installed (it is a benchmark-only dependency, AGPL). Install it with\n"
    "  .venv/bin/pip install cleanlab==2.9.0\n"
    "or point HITL_CLEANLAB_PATH at a folder holding it (pip install --target DIR "
    "cleanlab==2.9.0 scikit-learn pandas tqdm), or drop cleanlab from --strategies."
)


def builtin_weights() -> Path | None:
    """The base checkpoint shipped with the package, when present."""
    from hitl_plugin.model.train import BUILTIN_BASE

    return BUILTIN_BASE if BUILTIN_BASE.is_file() else None


def _import_cleanlab():
    extra = os.environ.get("HITL_CLEANLAB_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)  # appended: the venv's own numpy keeps precedence
    try:
        from cleanlab.object_detection import rank
    except ImportError as exc:
        raise SystemExit(f"{CLEANLAB_HINT}\n(import error: {exc})") from None
    return rank


def cleanlab_scores(labels: list[dict], predictions: list[list[np.ndarray]], *,
                    high_probability: float | None = None) -> np.ndarray:
    """ObjectLab label quality per image (lower = more likely wrong).

    :param high_probability: None for the public defaults; else the probability cut of the
        overlooked and swap checks (a private parameter: cleanlab fixes it at 0.95).
    """
    rank = _import_cleanlab()
    if high_probability is None:
        return rank.get_label_quality_scores(labels, predictions, verbose=False)
    from cleanlab.internal import constants

    return rank._get_subtype_label_quality_scores(
        labels=labels, predictions=predictions, alpha=constants.ALPHA,
        low_probability_threshold=constants.LOW_PROBABILITY_THRESHOLD,
        high_probability_threshold=high_probability, temperature=constants.TEMPERATURE,
        aggregation_weights=rank._get_aggregation_weights(None),
        overlapping_label_check=True)


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def objectlab_inputs(labels: list[dict], boxes: list[dict], cat_index: dict[int, int]
                     ) -> tuple[dict, list[np.ndarray]]:
    """One image's labels and predicted boxes in ObjectLab's format: ``{"bboxes", "labels"}``
    (xyxy, class index) and one ``(n, 5)`` array of xyxy + score per class."""
    label = {
        "bboxes": np.array([_xyxy(a["bbox"]) for a in labels], dtype=np.float32).reshape(-1, 4),
        "labels": np.array([cat_index[a["category_id"]] for a in labels], dtype=int),
    }
    per_class = [np.zeros((0, 5), dtype=np.float32) for _ in cat_index]
    for b in boxes:
        row = np.array([[*_xyxy(b["bbox"]), b["score"]]], dtype=np.float32)
        per_class[b["cls"]] = np.vstack([per_class[b["cls"]], row])
    return label, per_class


def precision_recall(selected: list[int], wrong: set[int]) -> dict:
    hits = sum(1 for i in selected if i in wrong)
    return {
        "label_error_precision": round(hits / len(selected), 4) if selected else None,
        "label_error_recall": round(hits / len(wrong), 4) if wrong else None,
        "hits": hits,
        "selected": len(selected),
    }


def auroc(scores: dict[int, float], wrong: set[int]) -> float | None:
    """Probability that a wrong image outranks a clean one (ties count half)."""
    pos = np.array([s for i, s in scores.items() if i in wrong])
    neg = np.array([s for i, s in scores.items() if i not in wrong])
    if not len(pos) or not len(neg):
        return None
    order = np.concatenate([pos, neg])
    ranks = _rankdata(order)
    return round(float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                       / (len(pos) * len(neg))), 4)


def _rankdata(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _at_wrong_budget(scores: dict[int, float], wrong: set[int]) -> dict:
    """Precision (= recall) of our ranking when the budget equals the number of wrong
    images: a ranking over the whole list, free of the 10 % budget's recall cap."""
    ranked = sorted(scores, key=lambda i: (-scores[i], i))[:len(wrong)]
    return precision_recall(ranked, wrong)


def corrected(coco: dict, truth: dict, image_ids: set[int]) -> dict:
    """``coco`` with the labels of ``image_ids`` replaced by the truth's (an oracle)."""
    anns = [a for a in coco["annotations"] if a["image_id"] not in image_ids]
    anns += [{**a, "source": "human"} for a in truth["annotations"] if a["image_id"] in image_ids]
    return {**coco, "annotations": anns}


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Block:
            def __enter__(self):
                self.t = time.monotonic()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.monotonic() - self.t, 2)

        return _Block()


def run(
    data: Path,
    *,
    budget: float,
    epochs: int = 30,
    imgsz: int = 128,
    batch: int = 16,
    seed: int = 0,
    strategies: tuple[str, ...] = STRATEGIES,
    retrain: bool = True,
    weights: Path | None = None,
    work: Path | None = None,
    device: str = "auto",
    selection: SelectionConfig | None = None,
    retrain_strategies: tuple[str, ...] | None = None,
    threads: int = 2,
    on_progress: Callable[[dict], None] | None = None,
    folds: int | None = None,
) -> dict:
    """Run the benchmark; return the JSON-ready result (see the module docstring).

    :param on_progress: called with the partial result after scoring and after each
        retraining (``complete`` is False until the end), so a run cut short still reports.
    :param folds: score each training image out of sample: ``folds`` models, each trained
        (same settings and starting weights) on the other folds' noisy labels
        (:func:`hitl_plugin.model.folds.fold_of`), predict the images they did not train
        on; ours and ObjectLab both rank those predictions.
    """
    from hitl_plugin.model.evaluate import evaluate
    from hitl_plugin.model.train import train

    started = time.monotonic()
    timer = _Timer()
    data = Path(data).absolute()
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; use {', '.join(STRATEGIES)}")
    if "cleanlab" in strategies:
        _import_cleanlab()  # fail before hours of training, not after
    selection = selection or SelectionConfig(strategy="label_error", audit_fraction=0.0)
    work = Path(work or tempfile.mkdtemp(prefix="hitl-bench-selection-")).absolute()
    root = work / "storage"
    layout = Layout.at(root)
    store = DatasetStore(root, DATASET)

    with timer("import"):
        version = store.latest() or store.import_source(data)
        coco = store.load(version)
        val_file = layout.val_file(DATASET)
        val = json.loads(val_file.read_text())
        data_yaml = export_yolo(root, DATASET, version, coco, val)
    truth = json.loads((data / "annotations" / "train_truth.json").read_text())
    report = json.loads((data / "noise_report.json").read_text())
    wrong = {e["image_id"] for e in report["errors"]}
    train_images = [img for img in coco["images"] if img.get("hitl_split") == "train"]
    train_coco = {**coco, "images": train_images}
    n_train = len(train_images)
    count = resolve_budget(selection, n_train, budget)

    def fit(name: str, labels: dict | None, ids: set[int] | None = None) -> tuple[dict, dict]:
        yaml_path = data_yaml
        if ids is not None:  # a reused --work folder must not reuse another selection's model
            name = f"{name}-{hashlib.sha1(str(sorted(ids)).encode()).hexdigest()[:8]}"
        if labels is not None:
            shutil.rmtree(work / "exports" / name, ignore_errors=True)
            yaml_path = export_yolo(root, DATASET, name, labels, val,
                                    out=work / "exports" / name)
        with timer(f"train_{name}"):
            # no per-epoch validation (the last epoch's best = last): evaluate() scores it
            result = train(yaml_path, work / "models" / name, weights=weights, epochs=epochs,
                           imgsz=imgsz, batch=batch, device=device, seed=seed,
                           threads=threads, extra_args={"val": False})
        with timer(f"evaluate_{name}"):
            metrics = evaluate(Path(result["checkpoint"]), yaml_path, val_file,
                               ModelPaths(work / "eval" / name), imgsz=imgsz, device=device)
        return result, metrics

    noisy, before = fit("noisy", None)

    # one prediction pass: our records and ObjectLab's inputs from the same boxes
    categories = sorted(c["id"] for c in coco["categories"])
    cat_index = {c: i for i, c in enumerate(categories)}
    labels_by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        labels_by_image.setdefault(ann["image_id"], []).append(ann)
    by_path = {str(layout.image_path(img["file_name"])): img for img in train_images}
    passes: list[tuple[str, list[str]]] = [(noisy["checkpoint"], list(by_path))]
    if folds:
        from hitl_plugin.model.folds import fold_of

        passes = []
        for f in range(folds):
            held = {i["id"] for i in train_images if fold_of(i["id"], folds, seed) == f}
            rest = {**coco, "images": [i for i in coco["images"] if i["id"] not in held],
                    "annotations": [a for a in coco["annotations"] if a["image_id"] not in held]}
            fold_model, _ = fit(f"fold{f}of{folds}", rest, set(held))
            passes.append((fold_model["checkpoint"],
                           [p for p, img in by_path.items() if img["id"] in held]))
    scores_path = work / "scores.jsonl"
    cl_labels: list[dict] = []
    cl_preds: list[list[np.ndarray]] = []
    cl_ids: list[int] = []
    ours: dict[int, float] = {}
    kinds: dict[str, int] = {}

    def predictions():
        for k, (checkpoint, paths) in enumerate(passes):
            list_file = work / f"score_images_{k}.txt"
            list_file.write_text("\n".join(paths) + "\n")
            yield from predict_stream(checkpoint, list_file, imgsz=imgsz, device=device,
                                      conf=LOW_CONF, threads=threads)

    with timer("score"), open(scores_path, "w", encoding="utf-8") as out:
        for path, boxes in predictions():
            img = by_path[str(Path(path).resolve())]
            preds = [{"bbox": b["bbox"], "category_id": categories[b["cls"]],
                      "score": round(b["score"], 4),
                      "class_probs": [round(v, 4) for v in b["class_probs"]]} for b in boxes]
            labs = labels_by_image.get(img["id"], [])
            rec = score_record(img, labs, preds, categories, selection)
            out.write(rec.model_dump_json() + "\n")
            ours[img["id"]] = rec.label_error_score
            for s in rec.suspicions:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            cl_ids.append(img["id"])
            label, per_class = objectlab_inputs(labs, boxes, cat_index)
            cl_labels.append(label)
            cl_preds.append(per_class)

    results: dict[str, dict] = {}
    picks: dict[str, list[int]] = {}
    common = dict(selection=selection, dag_id="bench", run_id="bench", dataset=DATASET,
                  version=version, model_version=noisy["checkpoint"], budget=count, seed=seed)
    if "ours" in strategies:
        with timer("select_ours"):
            manifest = select_samples(scores_path, train_coco, strategy="label_error", **common)
        picks["ours"] = [i.image_id for i in manifest.items]
        results["ours"] = {"auroc": auroc(ours, wrong)}
    if "random" in strategies:
        manifest = select_samples(scores_path, train_coco, strategy="random", **common)
        picks["random"] = [i.image_id for i in manifest.items]
        results["random"] = {}
    if "cleanlab" in strategies:
        for name, cut in (("cleanlab_p05", 0.5), ("cleanlab_default", None)):
            with timer(f"select_{name}"):
                quality = cleanlab_scores(cl_labels, cl_preds, high_probability=cut)
            order = sorted(range(len(cl_ids)), key=lambda k: (quality[k], cl_ids[k]))
            picks[name] = [cl_ids[k] for k in order[:count]]
            results[name] = {"auroc": auroc({cl_ids[k]: -float(quality[k])
                                              for k in range(len(cl_ids))}, wrong)}
    errors_per_image: dict[int, int] = {}
    for e in report["errors"]:
        errors_per_image[e["image_id"]] = errors_per_image.get(e["image_id"], 0) + 1
    for name, ids in picks.items():
        results[name].update(precision_recall(ids, wrong))
        fixed = sum(errors_per_image.get(i, 0) for i in ids)
        results[name]["errors_fixed"] = fixed  # injected errors on the corrected images
        results[name]["error_recall"] = round(fixed / max(len(report["errors"]), 1), 4)
        results[name]["map50_95_before"] = before["map50_95"]

    summary = {
        "data": str(data),
        "n_train_images": n_train,
        "images_with_errors": len(wrong),
        "injected_errors": len(report["errors"]),
        "noise": report.get("requested", {}).get("noise"),
        "budget": count,
        "epochs": epochs,
        "imgsz": imgsz,
        "seed": seed,
        "weights": str(weights) if weights else "scratch (yolov8n.yaml)",
        "out_of_sample_folds": folds,
        "budget_equal_to_wrong": _at_wrong_budget(ours, wrong) if "ours" in strategies else None,
        "map50_95_before": before["map50_95"],
        "map50_95_truth": None,
        "suspicions_by_kind": kinds,
        "strategies": results,
        "complete": not retrain,
        "seconds": timer.seconds,
        "work": str(work),
    }
    if on_progress is not None:
        on_progress(summary)
    if retrain:
        _, truth_metrics = fit("truth", corrected(coco, truth, {i["id"] for i in train_images}))
        summary["map50_95_truth"] = truth_metrics["map50_95"]
        gap = truth_metrics["map50_95"] - before["map50_95"]
        for name, ids in picks.items():
            if retrain_strategies is not None and name not in retrain_strategies and not (
                    name.startswith("cleanlab") and "cleanlab" in retrain_strategies):
                continue
            _, after = fit(name, corrected(coco, truth, set(ids)), set(ids))
            results[name].update({
                "map50_95_after": after["map50_95"],
                "gap_recovered": round((after["map50_95"] - before["map50_95"]) / gap, 4)
                if abs(gap) > 1e-9 else None,
            })
            if on_progress is not None:
                on_progress(summary)
        summary["complete"] = True
    summary["seconds"] = {**timer.seconds, "total": round(time.monotonic() - started, 2)}
    return summary


def main(argv: list[str], prog: str = "hitl bench selection") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder written by hitl synth")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="images to review: a count, or a fraction of training images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated: ours, random, cleanlab")
    parser.add_argument("--no-retrain", action="store_true",
                        help="report the precision figures only (one training)")
    parser.add_argument("--retrain-strategies", default=None,
                        help="retrain only for these (comma-separated; default: all). "
                        "cleanlab_default and cleanlab_p05 may be named one by one")
    parser.add_argument("--weights", default="builtin",
                        help="starting weights: builtin (the shipped base checkpoint, else "
                        "scratch), scratch, or a local .pt")
    parser.add_argument("--folds", type=int, default=None,
                        help="score out of sample with this many fold models (k trainings)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.weights == "builtin":
        weights = builtin_weights()
    elif args.weights == "scratch":
        weights = None
    else:
        weights = Path(args.weights)
        if not weights.is_file():
            parser.error(f"--weights {args.weights}: no such file")
    budget = args.budget if 0 < args.budget < 1 else int(args.budget)
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    keep = args.work is not None

    def progress(partial: dict) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(partial, indent=1) + "\n")

    try:
        result = run(args.data, budget=budget, epochs=args.epochs, imgsz=args.imgsz,
                     batch=args.batch, seed=args.seed, strategies=strategies,
                     retrain=not args.no_retrain, weights=weights, work=args.work,
                     device=args.device, threads=args.threads, folds=args.folds,
                     retrain_strategies=tuple(s.strip() for s in args.retrain_strategies.split(","))
                     if args.retrain_strategies else None, on_progress=progress)
    except ValueError as exc:
        parser.error(str(exc))
    if not keep:
        shutil.rmtree(result.pop("work"), ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
