"""Three SIMULATED people, each their own Label Studio user, on one round with overlap and
gold: a task is done only at k answers, the consensus is what is merged, and the per-person
table counts each person's tasks (real Label Studio, the product's own steps)."""

from __future__ import annotations

import asyncio
import json

from hitl_dev.simulator import person_token, simulate_workforce
from hitl_dev.synth import generate
from hitl_plugin import steps
from hitl_plugin.config import parse_config
from hitl_plugin.labeling.client import (
    AsyncLabelStudioClient,
    LabelStudioClient,
    round_counts,
    round_counts_sync,
)
from hitl_plugin.labeling.consensus import consensus
from hitl_plugin.model.score import score_record
from hitl_plugin.schemas import Corrections, SelectionManifest, read_model, write_json_atomic

PEOPLE = [{"email": "sim-ana@people.local", "accuracy": 0.95, "seed": 1},
          {"email": "sim-ben@people.local", "accuracy": 0.95, "seed": 2},
          {"email": "sim-cid@people.local", "accuracy": 0.6, "seed": 3}]


def _round(label_studio, tmp_path):
    source = tmp_path / "synth"
    generate(source, train=24, val=4, pool=0, classes=3, imgsz=64, noise=0.3, seed=5)
    truth = json.loads((source / "annotations" / "train_truth.json").read_text())
    gold_file = tmp_path / "gold.json"
    gold_ids = {im["id"] for im in truth["images"][:6]}
    gold_file.write_text(json.dumps({
        "images": [im for im in truth["images"] if im["id"] in gold_ids],
        "annotations": [a for a in truth["annotations"] if a["image_id"] in gold_ids],
        "categories": truth["categories"]}))
    config = parse_config({
        "dag_id": "workforce_it", "dataset": {"name": "wf_it", "source_dir": str(source)},
        "selection": {"strategy": "label_error", "budget": 8, "audit_fraction": 0.0},
        "labeling": {"annotators_per_task": 3, "overlap": 0.5, "gold": str(gold_file),
                     "gold_fraction": 0.3, "batch_size": 5, "min_agreement": 0.3,
                     "min_accuracy": 0.8}}, source=str(tmp_path / "wf.yaml"))
    rnd = steps.Round(config, label_studio.root, "workforce_it", "manual__wf")
    version = steps.prepare(rnd)["version"]
    coco = rnd.store.load(version)
    # a "model" that sees the true boxes: the label-error scorer then flags the noisy labels
    by_image: dict[int, list[dict]] = {}
    for a in truth["annotations"]:
        by_image.setdefault(a["image_id"], []).append(
            {"bbox": a["bbox"], "category_id": a["category_id"], "score": 0.9})
    labels: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        labels.setdefault(a["image_id"], []).append(a)
    cats = sorted(c["id"] for c in coco["categories"])
    rnd.paths.dir.mkdir(parents=True, exist_ok=True)
    with open(rnd.paths.scores, "w") as fh:
        for img in coco["images"]:
            rec = score_record(img, labels.get(img["id"], []), by_image.get(img["id"], []),
                               cats, config.selection)
            fh.write(rec.model_dump_json() + "\n")
    selected = steps.select(rnd, scores=str(rnd.paths.scores), version=version,
                            model_version="wf-m1")
    return rnd, version, truth, selected


def test_overlap_consensus_and_the_per_person_table(label_studio, tmp_path):
    rnd, version, truth, selected = _round(label_studio, tmp_path)
    manifest = read_model(SelectionManifest, selected["selection"])
    gold = {g.image_id for g in manifest.gold}
    assert len(gold) == 3 and len(manifest.items) == 11
    overlapped = [s.image_id for s in manifest.items if s.annotators == 3]
    assert set(overlapped) >= gold and len(overlapped) == 3 + 4
    # gold tasks look like the others: same data keys, a label-error (or audit) pre-fill
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        submitted = [steps.submit(rnd, client, batch=b) for b in selected["batches"]]
    assert sum(r["overlapped"] for r in submitted) == 7
    tasks = {}
    for r in submitted:
        tasks.update({int(k): v for k, v in json.loads(
            open(r["submission"]).read())["tasks"].items()})
    real = next(i for i in tasks if i not in gold)
    one_gold = label_studio.api("GET", f"/api/tasks/{tasks[min(gold)]}/")
    one_real = label_studio.api("GET", f"/api/tasks/{tasks[real]}/")
    assert set(one_gold["data"]) == set(one_real["data"])
    assert one_gold["overlap"] == 3

    # 1. a task counts as done only at k answers from different people
    tokens = [person_token(label_studio.url, label_studio.token, p["email"]) for p in PEOPLE]
    target = next(i for i in overlapped if i not in gold)
    single = next(i for i in tasks if i not in overlapped)
    plan = {"project_id": submitted[0]["project_id"], "dag_id": rnd.dag_id,
            "run_id": rnd.run_id}

    def done() -> int:
        """The wait's count, as the sensor's first poke and the trigger both make it."""
        with LabelStudioClient(label_studio.url, label_studio.token) as client:
            counts = round_counts_sync(client, plan["project_id"], plan["dag_id"],
                                       plan["run_id"], 3)

        async def in_the_triggerer() -> dict:
            async with AsyncLabelStudioClient(label_studio.url, label_studio.token) as client:
                return await round_counts(client, plan["project_id"], plan["dag_id"],
                                          plan["run_id"], 3)

        assert asyncio.run(in_the_triggerer()) == counts
        return counts["completed"]

    def answer_as(token: str, image_id: int) -> None:
        task = label_studio.api("GET", f"/api/tasks/{tasks[image_id]}/")
        version = label_studio.api("GET", f"/api/projects/{plan['project_id']}/")[
            "model_version"]
        shown = next(p["result"] for p in task["predictions"] if p["model_version"] == version)
        resp = label_studio.session.post(
            f"{label_studio.url}/api/tasks/{tasks[image_id]}/annotations/",
            headers={"Authorization": f"Token {token}"}, timeout=60,
            json={"result": shown, "was_cancelled": False, "lead_time": 4.0})
        assert resp.status_code == 201, resp.text

    assert done() == 0
    answer_as(tokens[0], single)
    answer_as(tokens[0], target)
    answer_as(tokens[1], target)
    assert done() == 1  # the single task; the overlapped one has 2 of 3 answers
    answer_as(tokens[2], target)
    assert done() == 2

    # 2. the workforce does the rest, through Label Studio's labeling stream
    summary = simulate_workforce(label_studio.url, label_studio.token, plan["project_id"],
                                 truth, PEOPLE, timeout=120, poll=0.3, idle_stop=3.0)
    assert not summary["errors"], summary["errors"]
    assert done() == len(manifest.items)
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        collected = steps.collect(rnd, client, selection=selected["selection"],
                                  project_id=plan["project_id"])
    assert collected["gold"] == 3 and collected["pending"] == 0
    corrections = read_model(Corrections, collected["corrections"])

    # 3. the consensus boxes are what is merged
    merged = steps.merge(rnd, corrections=collected["corrections"], base_version=version)
    new = rnd.store.load(merged["version"])
    consensus_items = [c for c in corrections.items if c.annotators]
    held = {h.image_id for h in corrections.held}
    assert len(consensus_items) + len(held & set(overlapped)) == 4
    assert consensus_items, corrections.held
    for c in consensus_items:
        assert len(c.annotators) == 3 and len(c.answers) == 3
        again = consensus([[b.model_dump() for b in a.boxes] for a in c.answers],
                          weights=[{r.annotator: r.accuracy for r in corrections.annotators}
                                   .get(a.annotator) or 1.0 for a in c.answers])
        assert [(b.bbox, b.category_id) for b in c.boxes] == [
            (b["bbox"], b["category_id"]) for b in again["boxes"]]
        written = sorted((a["category_id"], [round(v, 2) for v in a["bbox"]])
                         for a in new["annotations"] if a["image_id"] == c.image_id)
        assert written == sorted((b.category_id, [round(v, 2) for v in b.bbox])
                                 for b in c.boxes)
        image = next(im for im in new["images"] if im["id"] == c.image_id)
        assert image["hitl_consensus"]["people"] == 3
    for g in gold:  # gold answers score people and are never merged
        assert [a for a in new["annotations"] if a["image_id"] == g] == [
            a for a in rnd.store.load(version)["annotations"] if a["image_id"] == g]

    # 4. the per-person table, with each person's task count from Label Studio itself
    posted: dict[str, int] = {}
    for task_id in tasks.values():
        for a in label_studio.api("GET", f"/api/tasks/{task_id}/")["annotations"]:
            if not a["was_cancelled"]:
                email = a["created_username"].split(",")[0].strip()
                posted[email] = posted.get(email, 0) + 1
    rows = {r.annotator: r for r in corrections.annotators}
    assert {e: r.tasks for e, r in rows.items()} == posted
    assert all(rows[p["email"]].gold_tasks == 3 for p in PEOPLE)
    assert all(rows[p["email"]].gold_boxes > 0 and rows[p["email"]].median_seconds
               for p in PEOPLE)
    written = json.loads(rnd.paths.corrections.read_text())["annotators"]
    assert [r["annotator"] for r in written] == sorted(posted)
    write_json_atomic(tmp_path / "summary.json", summary)
