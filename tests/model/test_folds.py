"""Out-of-sample scoring: stable folds, and each labeled image scored by a model that never
trained on it (two real one-epoch trainings on tiny images)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hitl_plugin import steps
from hitl_plugin.config import PipelineConfig
from hitl_plugin.dataset.export import export_yolo
from hitl_plugin.model.folds import fold_of
from hitl_plugin.model.score import read_scores
from hitl_plugin.model.train import train


def test_folds_are_stable_balanced_and_seeded():
    ids = range(1, 1001)
    folds = [fold_of(i, 4, seed=0) for i in ids]
    assert folds == [fold_of(i, 4, seed=0) for i in ids]  # the same in every round
    counts = Counter(folds)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 200
    assert folds != [fold_of(i, 4, seed=1) for i in ids]


def test_score_step_scores_labeled_images_out_of_sample(tmp_path):
    from hitl_dev.base_checkpoint import tiny_export

    _, _, root = tiny_export(tmp_path, train=10, val=4, pool=3, imgsz=64, name="shapes")
    config = PipelineConfig.model_validate({
        "dag_id": "oos", "storage": {"root": str(root)}, "dataset": {"name": "shapes"},
        "model": {"base_checkpoint": None},  # scratch: fast, and quality does not matter
        "training": {"epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu"},
        "selection": {"out_of_sample_folds": 2}})
    rnd = steps.Round(config, Path(root), "oos", "r1")
    version = rnd.store.require_latest()
    coco = rnd.store.load(version)
    labeled = {i["id"] for i in coco["images"] if i.get("hitl_split") == "train"}
    # the round's own checkpoint scores the pool: any trained model will do here
    data = export_yolo(root, "shapes", version, coco,
                       json.loads(rnd.layout.val_file("shapes").read_text()))
    main = train(data, tmp_path / "main", epochs=1, imgsz=64, batch=4, device="cpu")
    result = steps.score(rnd, checkpoint=main["checkpoint"], version=version, imgsz=64)
    records = list(read_scores(result["scores"]))
    assert result["n_images"] == len(records) == len(coco["images"])  # train + pool
    oos = result["out_of_sample"]
    assert sum(oos["folds"]) == len(labeled) and oos["fold_seconds"] > 0
    assert {r.image_id for r in records if r.split == "train"} == labeled
    for f in range(2):  # fold f's model trained on the other fold only
        listed = (rnd.paths.model(f"fold{f}of2").dir / "export" / "train" / "train.txt"
                  ).read_text().split()
        trained_on = {int(Path(p).stem) for p in listed}
        held = {i for i in labeled if fold_of(i, 2, 0) == f}
        assert trained_on == labeled - held and held
