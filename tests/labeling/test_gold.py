"""Gold tasks mixed into a round, and which tasks several people answer (no server)."""

from __future__ import annotations

import json

import pytest

from hitl_plugin.config import parse_config
from hitl_plugin.exceptions import ConfigError
from hitl_plugin.labeling.client import count_filters
from hitl_plugin.labeling.gold import gold_images, mix_gold
from hitl_plugin.labeling.tasks import to_task
from hitl_plugin.model.select import batches
from hitl_plugin.schemas import (
    Category,
    ImageScore,
    LabelBox,
    Prediction,
    SelectedSample,
    SelectionManifest,
)

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def _dataset(n: int = 20) -> dict:
    images = [{"id": i, "file_name": f"ds/train/{i:03d}.png", "width": 100, "height": 100,
               "hitl_split": "train"} for i in range(1, n + 1)]
    anns = [{"id": 100 + i, "image_id": i, "category_id": 1 + i % 2,
             "bbox": [10.0, 10.0, 30.0, 30.0], "iscrowd": 0} for i in range(1, n + 1)]
    return {"images": images, "annotations": anns, "categories": CATS}


def _setup(tmp_path, **labeling):
    coco = _dataset()
    gold = {"images": [{"id": 7, "file_name": f"train/{i:03d}.png"} for i in range(1, 7)],
            "annotations": [], "categories": [{"id": 5, "name": "circle"},
                                              {"id": 6, "name": "square"}]}
    for k, im in enumerate(gold["images"]):
        im["id"] = 50 + k
        gold["annotations"] += [
            {"id": 900 + 2 * k, "image_id": im["id"], "category_id": 5,
             "bbox": [10.0, 10.0, 30.0, 30.0]},
            {"id": 901 + 2 * k, "image_id": im["id"], "category_id": 6,
             "bbox": [55.0, 50.0, 25.0, 30.0]}]
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    config = parse_config({"dag_id": "g", "dataset": {"name": "ds"},
                           "labeling": {"gold": "gold.json", **labeling}},
                          source=str(tmp_path / "p.yaml"))
    scores = tmp_path / "scores.jsonl"
    with open(scores, "w") as fh:
        for img in coco["images"]:  # a model that sees both objects of every image
            fh.write(ImageScore(image_id=img["id"], split="train", predictions=[
                Prediction(bbox=[10.0, 10.0, 30.0, 30.0], category_id=1, score=0.9),
                Prediction(bbox=[55.0, 50.0, 25.0, 30.0], category_id=2, score=0.9),
            ]).model_dump_json() + "\n")
    items = [SelectedSample(image_id=i, file_name=f"ds/train/{i:03d}.png", width=100,
                            height=100, split="train", reason="label_error", score=0.8,
                            labels=[LabelBox(id=100 + i, bbox=[10.0, 10.0, 30.0, 30.0],
                                             category_id=1 + i % 2)])
             for i in range(7, 17)]
    manifest = SelectionManifest(dag_id="g", run_id="r1", dataset="ds", version="v0001",
                                 model_version="m", categories=[Category(**c) for c in CATS],
                                 strategy="label_error", budget=10, seed=0, items=items)
    return config, coco, scores, manifest


def test_gold_is_spread_over_every_batch_and_looks_like_the_rest(tmp_path):
    config, coco, scores, manifest = _setup(tmp_path, annotators_per_task=3, overlap=0.5,
                                            gold_fraction=0.3)
    gold = gold_images(config, coco)
    assert sorted(gold) == [1, 2, 3, 4, 5, 6]  # matched by the imported file name
    mixed = mix_gold(manifest, config, coco, scores, gold=gold)
    gold_ids = {g.image_id for g in mixed.gold}
    assert len(gold_ids) == round(10 * 0.3 / 0.7) == 4
    for b in batches(len(mixed.items), 5, tmp_path / "s.json"):
        assert gold_ids & {s.image_id for s in mixed.items[b["start"]:b["stop"]]}
    assert all(s.annotators == 3 for s in mixed.items if s.image_id in gold_ids)
    assert sum(s.annotators == 3 for s in mixed.items if s.image_id not in gold_ids) == 5
    names = {c["id"]: c["name"] for c in CATS}
    real = to_task(next(s for s in mixed.items if s.image_id not in gold_ids), dag_id="g",
                   run_id="r1", model_version="m", names=names)
    for truth in mixed.gold:
        sample = next(s for s in mixed.items if s.image_id == truth.image_id)
        task = to_task(sample, dag_id="g", run_id="r1", model_version="m", names=names)
        assert set(task["data"]) == set(real["data"])  # nothing says "gold"
        assert "gold" not in json.dumps(task).lower()
        assert task["data"]["hitl_split"] == "train"
        assert truth.planted, truth
        prefill = sorted((b.category_id, b.bbox) for b in sample.labels)
        assert prefill != sorted((b.category_id, b.bbox) for b in truth.boxes)
        # the model's boxes see the truth, so the scorer flags the planted error
        assert sample.reason == "label_error" and sample.suspicions


def test_no_gold_configured_leaves_the_selection_and_marks_the_overlap(tmp_path):
    config, coco, scores, manifest = _setup(tmp_path, annotators_per_task=2, overlap=0.3)
    plain = config.model_copy(update={"labeling": config.labeling.model_copy(
        update={"gold": None})})
    mixed = mix_gold(manifest, plain, coco, scores)
    assert [s.image_id for s in mixed.items] == [s.image_id for s in manifest.items]
    assert mixed.gold == [] and sum(s.annotators == 2 for s in mixed.items) == 3


def test_a_gold_image_outside_the_dataset_is_named(tmp_path):
    config, coco, _, _ = _setup(tmp_path)
    gold = json.loads((tmp_path / "gold.json").read_text())
    gold["images"][0]["file_name"] = "elsewhere/x.png"
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    with pytest.raises(ConfigError, match=r"gold.json: image 'elsewhere/x.png' is not in"):
        gold_images(config, coco)


def test_overlap_needs_several_people():
    with pytest.raises(ConfigError, match="labeling.overlap needs labeling.annotators_per_task"):
        parse_config({"dag_id": "g", "labeling": {"overlap": 0.2}})


def test_the_wait_counts_k_answers_with_the_same_number_of_queries():
    plain, overlapped = count_filters(1), count_filters(3)
    assert [n for n, _ in plain] == [n for n, _ in overlapped] == ["total", "annotated",
                                                                     "skipped"]
    # with overlap, "annotated" is Label Studio's is_labeled (k answers), and a skip ends
    # only a one-person task
    assert overlapped[1][1][0]["filter"] == "filter:tasks:completed_at"
    assert {"filter": "filter:tasks:data.hitl_annotators", "operator": "equal",
            "type": "Number", "value": 1} in overlapped[2][1]


def test_recount_reads_the_answers_when_label_studios_counters_lag():
    from hitl_plugin.labeling.client import recount

    def ann(who: str, cancelled: bool = False) -> dict:
        return {"created_username": f" {who}@x, 1", "was_cancelled": cancelled}

    tasks = [
        # 3 answers from 3 people on a task of 3, left open by a lagging counter: done
        {"data": {"hitl_annotators": 3}, "annotations": [ann("a"), ann("b"), ann("c")]},
        # 3 answers from 2 people: not done (one person counts once)
        {"data": {"hitl_annotators": 3}, "annotations": [ann("a"), ann("a"), ann("b")]},
        # a skip on a task of 3 does not end it; on a task of 1 it does
        {"data": {"hitl_annotators": 3}, "annotations": [ann("a", True)]},
        {"data": {"hitl_annotators": 1}, "annotations": [ann("a", True)]},
        {"data": {}, "annotations": []},
    ]
    assert recount(tasks) == {"annotated": 1, "skipped": 1}


def test_images_confirmed_by_a_unanimous_consensus_become_gold(tmp_path):
    coco = _dataset(4)
    coco["images"][0]["hitl_consensus"] = {"round": 2, "people": 3, "agreement": 1.0}
    coco["images"][1]["hitl_consensus"] = {"round": 2, "people": 3, "agreement": 0.8}
    coco["images"][2]["hitl_consensus"] = {"round": 2, "people": 2, "agreement": 1.0}
    config = parse_config({"dag_id": "g", "dataset": {"name": "ds"},
                           "labeling": {"gold_from_consensus": True}})
    gold = gold_images(config, coco)
    assert list(gold) == [1] and gold[1].source == "consensus"
    assert [b.bbox for b in gold[1].boxes] == [[10.0, 10.0, 30.0, 30.0]]
