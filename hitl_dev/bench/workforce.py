"""``hitl bench workforce``: many SIMULATED people of known quality, measured by the product.

Per seed, one round of the product's own steps against a real Label Studio that the
benchmark starts (or ``--url``): a synthetic dataset with noisy labels and known truth
(``hitl synth``), the first ``--gold-images`` train images given as ``labeling.gold``,
scoring with the packaged base checkpoint (:func:`hitl_plugin.steps.score`), selection with
gold tasks mixed in and a share of tasks overlapped (:func:`hitl_plugin.steps.select`),
submit, a SIMULATED workforce (:func:`hitl_dev.simulator.simulate_workforce`: four Label
Studio users, three at accuracy 0.95 and one at 0.6, each working through Label Studio's
labeling stream), the wait's own count, collect (consensus, gold scoring, holds) and merge.

What it measures, per seed:

- (a) each person's accuracy as the product measured it on gold tasks, against the seeded
  accuracy, with 2 sigma of the estimate (binomial, from the seeded accuracy and the gold
  boxes the person answered);
- (b) box errors on the overlapped non-gold images, against the truth (a true box that no
  box matches, plus a box that matches no true box; IoU >= 0.5, the same class): in the
  merged dataset (k = 3 consensus; a held task keeps its old labels) against the mean over
  the task's single answers (what k = 1 would have merged);
- (c) whether the weak person is flagged (``labeling.min_accuracy``), and who else is;
- (d) the extra answers the overlap costs, per non-gold task (and the gold tasks' cost).

stdout carries only the final JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from hitl_dev.bench import emit, own_label_studio, stdout_to_stderr

log = logging.getLogger(__name__)

#: The simulated workforce: three careful people and one weak one.
WORKFORCE = (("sim-ada", 0.95), ("sim-bo", 0.95), ("sim-cy", 0.95), ("sim-dee", 0.6))
WEAK = "sim-dee"
DEFAULTS = {"train": 200, "gold_images": 70, "budget": 60, "overlap": 0.5, "k": 3,
            "gold_fraction": 0.5, "min_accuracy": 0.8, "min_agreement": 0.5, "imgsz": 96}


def box_errors(boxes: list[dict], truth: list[dict]) -> int:
    """True boxes that no box matches plus boxes that match no true box."""
    from hitl_plugin.boxes import same_object_pairs

    matched = len(same_object_pairs(truth, boxes))
    return (len(truth) - matched) + (len(boxes) - matched)


def run_seed(url: str, token: str, seed: int, work: Path, storage: Path, sizes: dict) -> dict:
    """One round with the simulated workforce; the measurements of one seed."""
    from hitl_dev.simulator import simulate_workforce
    from hitl_dev.synth import generate
    from hitl_plugin import steps
    from hitl_plugin.config import parse_config
    from hitl_plugin.labeling.client import LabelStudioClient
    from hitl_plugin.schemas import Corrections, SelectionManifest, read_model

    began = time.monotonic()
    source = work / f"synth-{seed}"
    generate(source, train=sizes["train"], val=4, pool=0, classes=4, imgsz=sizes["imgsz"],
             noise=0.2, seed=seed)
    truth = json.loads((source / "annotations" / "train_truth.json").read_text())
    gold_ids = {im["id"] for im in truth["images"][:sizes["gold_images"]]}
    gold_file = work / f"gold-{seed}.json"
    gold_file.write_text(json.dumps({
        "images": [im for im in truth["images"] if im["id"] in gold_ids],
        "annotations": [a for a in truth["annotations"] if a["image_id"] in gold_ids],
        "categories": truth["categories"]}))
    name = f"wf{seed}_{time.time_ns() % 10**8}"
    config = parse_config({
        "dag_id": name, "dataset": {"name": name, "source_dir": str(source)},
        "training": {"imgsz": sizes["imgsz"], "threads": 2},
        "selection": {"strategy": "label_error", "budget": sizes["budget"],
                      "audit_fraction": 0.1, "seed": seed},
        "labeling": {"annotators_per_task": sizes["k"], "overlap": sizes["overlap"],
                     "gold": str(gold_file), "gold_fraction": sizes["gold_fraction"],
                     "batch_size": 30, "min_agreement": sizes["min_agreement"],
                     "min_accuracy": sizes["min_accuracy"]}}, source=str(work / "wf.yaml"))
    rnd = steps.Round(config, storage, name, f"bench__seed{seed}")
    version = steps.prepare(rnd)["version"]
    with stdout_to_stderr():
        scored = steps.score(rnd, checkpoint=steps.base_weights(config), version=version)
    selected = steps.select(rnd, scores=scored["scores"], version=version,
                            model_version="base")
    manifest = read_model(SelectionManifest, selected["selection"])
    with LabelStudioClient(url, token) as client:
        submitted = [steps.submit(rnd, client, batch=b) for b in selected["batches"]]
    project = submitted[0]["project_id"]
    people = [{"email": f"{who}-s{seed}@people.local", "accuracy": acc, "seed": seed * 100 + i}
              for i, (who, acc) in enumerate(WORKFORCE)]
    stop = threading.Event()
    plan = steps.plan_wait(rnd, task_id="wait", submissions=submitted, timeout_s=900)
    outcome: dict = {}

    def wait() -> None:
        with LabelStudioClient(url, token) as client:
            while not stop.is_set():
                event = steps.check_wait(client, plan)
                if event is not None:
                    outcome.update(event)
                    stop.set()
                    return
                stop.wait(1.0)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    workforce = simulate_workforce(url, token, project, truth, people, stop_event=stop,
                                   timeout=900, poll=0.5)
    waiter.join(30)
    if outcome.get("status") != "success":
        raise RuntimeError(f"seed {seed}: the wait did not end in success: {outcome}")
    with LabelStudioClient(url, token) as client:
        collected = steps.collect(rnd, client, selection=selected["selection"],
                                  project_id=project)
    corrections = read_model(Corrections, collected["corrections"])
    merged = steps.merge(rnd, corrections=collected["corrections"], base_version=version)
    new = rnd.store.load(merged["version"])

    truth_by_image: dict[int, list[dict]] = {}
    for a in truth["annotations"]:
        truth_by_image.setdefault(a["image_id"], []).append(a)
    labels_after: dict[int, list[dict]] = {}
    for a in new["annotations"]:
        labels_after.setdefault(a["image_id"], []).append(a)
    gold_in_round = {g.image_id for g in manifest.gold}
    overlapped = [s.image_id for s in manifest.items
                  if s.annotators > 1 and s.image_id not in gold_in_round]
    # each person's answers on the overlapped tasks, from Label Studio (held tasks too)
    per_task: dict[int, list[list[dict]]] = {}
    samples = {s.image_id: s for s in manifest.items}
    with LabelStudioClient(url, token) as client:
        from hitl_plugin.labeling.client import run_filters
        from hitl_plugin.labeling.collect import task_answers

        categories = {c.name: c.id for c in manifest.categories}
        for task in client.iter_tasks(project, run_filters(rnd.dag_id, rnd.run_id)):
            read = task_answers(task, dag_id=rnd.dag_id, run_id=rnd.run_id, samples=samples,
                                categories=categories)
            if isinstance(read, tuple) and read[1] in overlapped:
                per_task[read[1]] = [[b.model_dump() for b in a.boxes] for a in read[2]]
    with_consensus = sum(box_errors(labels_after.get(i, []), truth_by_image.get(i, []))
                         for i in overlapped)
    single = sum(statistics.fmean(box_errors(b, truth_by_image.get(i, [])) for b in per_task[i])
                 for i in overlapped if per_task.get(i))
    rows = {r.annotator: r for r in corrections.annotators}
    measured = []
    for p in people:
        row = rows.get(p["email"])
        n = row.gold_boxes if row else 0
        sigma = math.sqrt(p["accuracy"] * (1 - p["accuracy"]) / n) if n else None
        measured.append({
            "person": p["email"], "seeded_accuracy": p["accuracy"],
            "measured_accuracy": row.accuracy if row else None,
            "accuracy_ci95": row.accuracy_ci95 if row else None,
            "error": (None if row is None or row.accuracy is None
                      else round(abs(row.accuracy - p["accuracy"]), 4)),
            "two_sigma": None if sigma is None else round(2 * sigma, 4),
            "gold_boxes": n, "precision": row.precision if row else None,
            "agreement": row.agreement if row else None, "tasks": row.tasks if row else 0,
            "median_seconds": row.median_seconds if row else None,
            "flagged": bool(row and row.flagged), "held_answers": row.held_answers if row else 0,
            "simulated_mistakes": workforce["people"].get(p["email"], {}).get("mistakes"),
        })
    non_gold = [s for s in manifest.items if s.image_id not in gold_in_round]
    answers_non_gold = sum(s.annotators for s in non_gold)
    weak = next(m for m in measured if m["person"].startswith(WEAK))
    return {
        "seed": seed,
        "tasks": len(manifest.items), "gold_tasks": len(gold_in_round),
        "overlapped_tasks": len(overlapped), "single_tasks": len(non_gold) - len(overlapped),
        "planted_errors": sum(len(g.planted) for g in manifest.gold),
        "people": measured,
        "box_errors_overlapped": {"consensus_k3": with_consensus,
                                  "single_answer_k1": round(single, 3),
                                  "true_boxes": sum(len(truth_by_image.get(i, []))
                                                    for i in overlapped)},
        "held": {"low_agreement": sum(1 for h in corrections.held if h.kind == "low_agreement"),
                 "low_accuracy": sum(1 for h in corrections.held if h.kind == "low_accuracy")},
        "weak_flagged": weak["flagged"],
        "others_flagged": [m["person"] for m in measured
                           if m["flagged"] and m is not weak],
        "answers": {"non_gold": answers_non_gold, "non_gold_tasks": len(non_gold),
                    "gold": len(gold_in_round) * sizes["k"]},
        "overlap_cost_fraction": round((answers_non_gold - len(non_gold)) / len(non_gold), 4),
        "gold_cost_fraction": round(len(gold_in_round) * sizes["k"] / len(non_gold), 4),
        "wait": {k: outcome.get(k) for k in ("status", "total", "completed")},
        "workforce_errors": workforce["errors"],
        "seconds": round(time.monotonic() - began, 1),
    }


def summarise(seeds: list[dict]) -> dict:
    people = [m for s in seeds for m in s["people"]]
    cons = sum(s["box_errors_overlapped"]["consensus_k3"] for s in seeds)
    single = sum(s["box_errors_overlapped"]["single_answer_k1"] for s in seeds)
    per_seed = [1 - s["box_errors_overlapped"]["consensus_k3"]
                / s["box_errors_overlapped"]["single_answer_k1"]
                for s in seeds if s["box_errors_overlapped"]["single_answer_k1"]]
    errors = [m["error"] for m in people if m["error"] is not None]
    return {
        "accuracy_error_max": max(errors) if errors else None,
        "accuracy_tolerance": max((m["two_sigma"] for m in people if m["two_sigma"]),
                                  default=None),
        "consensus_error_reduction": round(1 - cons / single, 4) if single else None,
        "weak_flagged": all(s["weak_flagged"] for s in seeds),
        "overlap_cost_fraction": round(statistics.fmean(s["overlap_cost_fraction"]
                                                        for s in seeds), 4),
        "gold_boxes_per_person": min(m["gold_boxes"] for m in people),
        # beside the keys above
        "each_within_own_two_sigma": sum(1 for m in people if m["error"] is not None
                                         and m["error"] <= m["two_sigma"]),
        "person_seed_estimates": len(people),
        "consensus_error_reduction_per_seed": [round(v, 4) for v in per_seed],
        "consensus_error_reduction_std": (round(statistics.stdev(per_seed), 4)
                                          if len(per_seed) > 1 else None),
        "others_flagged": sorted({p for s in seeds for p in s["others_flagged"]}),
        "gold_cost_fraction": round(statistics.fmean(s["gold_cost_fraction"] for s in seeds), 4),
    }


def main(argv: list[str] | None = None, prog: str = "hitl bench workforce") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--url", help="a running Label Studio (default: start one)")
    parser.add_argument("--token", help="its API token (with --url)")
    parser.add_argument("--work", type=Path,
                        help="working folder (default: a temporary one, removed); with --url "
                        "it must be that server's local-files document root (the storage "
                        "root of the rounds)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value,
                            help=f"default {value}")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.url and not (args.token and args.work):
        parser.error("--url needs --token and --work (the server's document root)")
    sizes = {k: getattr(args, k) for k in DEFAULTS}
    work = args.work or Path(tempfile.mkdtemp(prefix="hitl-bench-workforce-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    # Label Studio serves the images from the storage root (its local-files document root)
    storage = work if args.url else work / "storage"
    (storage / "images").mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            url, token = args.url, args.token
            if not url:
                server = stack.enter_context(own_label_studio(work / "ls-data", storage))
                url, token = server.url, server.token
            seeds = []
            for seed in range(args.seed, args.seed + args.seeds):
                log.info("seed %s ...", seed)
                seeds.append(run_seed(url, token, seed, work, storage, sizes))
                log.info("seed %s done in %s s", seed, seeds[-1]["seconds"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "workforce", "simulated_people": True,
        "command": "hitl bench workforce " + " ".join(argv if argv is not None
                                                      else sys.argv[3:]),
        "workforce": [{"name": n, "seeded_accuracy": a} for n, a in WORKFORCE],
        "settings": sizes, "seconds": round(time.monotonic() - began, 1),
        "summary": summarise(seeds), "seeds": seeds,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
