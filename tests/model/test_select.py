"""Budgeted selection on hand-made scores: budget, strategies, quotas, audit, determinism."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hitl_plugin.config import SelectionConfig
from hitl_plugin.model.select import batches, resolve_budget, select_samples
from hitl_plugin.schemas import (
    ImageScore,
    Prediction,
    SelectionManifest,
    read_model,
    write_json_atomic,
)

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]


def make(tmp_path, n_train=40, n_pool=20, rare_every=10):
    """Train images 1..n_train (label-error score falls with id), pool images after them
    (uncertainty falls with id). Every ``rare_every``-th image holds a triangle."""
    images, anns, lines = [], [], []
    for i in range(1, n_train + n_pool + 1):
        split = "train" if i <= n_train else "pool"
        images.append({"id": i, "file_name": f"d/{split}/{i}.png", "width": 64, "height": 48,
                       "hitl_split": split})
        cls = 3 if i % rare_every == 0 else 1 + i % 2
        preds = []
        if split == "train":
            anns.append({"id": i, "image_id": i, "category_id": cls, "bbox": [1, 1, 9, 9],
                         "area": 81, "iscrowd": 0})
        else:
            preds = [Prediction(bbox=[1, 1, 9, 9], category_id=cls, score=0.8)]
        rec = ImageScore(
            image_id=i, split=split, n_labels=int(split == "train"),
            label_error_score=(1.0 - i / 100) if split == "train" else 0.0,
            uncertainty={"entropy": 1.0 - (i - n_train) / 100, "margin": 0.5,
                         "least_confidence": 0.5},
            predictions=preds)
        lines.append(rec.model_dump_json())
    coco = {"images": images, "annotations": anns, "categories": CATS}
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, coco


def run(path, coco, **kw):
    sel = kw.pop("selection", SelectionConfig(audit_fraction=0.0))
    return select_samples(path, coco, selection=sel, dag_id="d", run_id="r", dataset="shapes",
                          version="v0001", model_version="m1", **kw)


def test_budget_count_fraction_and_config():
    sel = SelectionConfig(budget_fraction=0.1)
    assert resolve_budget(sel, 60) == 6
    assert resolve_budget(sel, 60, 0.25) == 15
    assert resolve_budget(sel, 60, 7) == 7
    assert resolve_budget(sel, 60, 600) == 60
    assert resolve_budget(SelectionConfig(budget=9), 60) == 9
    assert resolve_budget(SelectionConfig(budget=9), 60, 4) == 4
    with pytest.raises(ValueError):
        resolve_budget(sel, 60, -1)


def test_label_error_takes_top_train_images_by_score(tmp_path):
    path, coco = make(tmp_path)
    m = run(path, coco, budget=5, strategy="label_error")
    assert [i.image_id for i in m.items] == [1, 2, 3, 4, 5]
    assert {i.reason for i in m.items} == {"label_error"}
    assert m.budget == 5 and m.strategy == "label_error"
    assert m.items[0].file_name == "d/train/1.png" and m.items[0].width == 64


def test_crowd_annotations_go_apart_from_the_labels_people_edit(tmp_path):
    path, coco = make(tmp_path)
    coco["annotations"].append({"id": 999, "image_id": 1, "category_id": 1,
                                "bbox": [20, 20, 30, 20], "area": 600, "iscrowd": 1})
    m = run(path, coco, budget=1, strategy="label_error")
    (item,) = m.items
    assert [b.id for b in item.labels] == [1] and [b.id for b in item.crowd] == [999]


def test_uncertainty_takes_pool_first(tmp_path):
    path, coco = make(tmp_path)
    m = run(path, coco, budget=4, strategy="uncertainty")
    assert [i.image_id for i in m.items] == [41, 42, 43, 44]
    assert all(i.split == "pool" and i.reason == "uncertainty" for i in m.items)
    assert m.items[0].predictions[0].category_id == 2  # carried over as pre-annotations


def test_uncertainty_falls_back_to_train_when_pool_runs_out(tmp_path):
    path, coco = make(tmp_path, n_train=10, n_pool=3)
    m = run(path, coco, budget=5, strategy="uncertainty")
    assert Counter(i.split for i in m.items) == {"pool": 3, "train": 2}


def test_hybrid_splits_by_pool_share_and_default_fraction(tmp_path):
    path, coco = make(tmp_path)
    sel = SelectionConfig(pool_share=0.3, audit_fraction=0.0, budget_fraction=0.1)
    m = run(path, coco, selection=sel)  # 10% of 60 = 6: 2 pool + 4 train
    assert m.budget == 6
    assert Counter((i.split, i.reason) for i in m.items) == {
        ("pool", "uncertainty"): 2, ("train", "label_error"): 4}
    assert sorted(i.image_id for i in m.items) == [1, 2, 3, 4, 41, 42]


def test_hybrid_side_running_short_leaves_places_to_other(tmp_path):
    path, coco = make(tmp_path, n_train=20, n_pool=1)
    sel = SelectionConfig(pool_share=0.5, audit_fraction=0.0)
    m = run(path, coco, selection=sel, budget=6)
    assert Counter(i.split for i in m.items) == {"pool": 1, "train": 5}


def test_audit_fraction_draws_from_unselected(tmp_path):
    path, coco = make(tmp_path)
    sel = SelectionConfig(audit_fraction=0.2, strategy="label_error")
    m = run(path, coco, selection=sel, budget=10)
    reasons = Counter(i.reason for i in m.items)
    assert reasons == {"label_error": 8, "audit": 2}
    ranked = {i.image_id for i in m.items if i.reason == "label_error"}
    assert ranked == set(range(1, 9))
    audit = [i.image_id for i in m.items if i.reason == "audit"]
    assert not set(audit) & ranked and len(set(audit)) == 2


def test_same_seed_same_manifest_other_seed_other_audit(tmp_path):
    path, coco = make(tmp_path)
    sel = SelectionConfig(audit_fraction=0.5, strategy="label_error")
    a = run(path, coco, selection=sel, budget=10, seed=1)
    b = run(path, coco, selection=sel, budget=10, seed=1)
    assert a.model_dump() == b.model_dump()
    audits = {tuple(sorted(i.image_id for i in run(path, coco, selection=sel, budget=10,
                                                   seed=s).items if i.reason == "audit"))
              for s in range(2, 6)}
    assert len(audits) > 1
    assert run(path, coco, selection=sel, budget=10, seed=3).seed == 3


def test_ties_break_by_image_id(tmp_path):
    lines = [ImageScore(image_id=i, split="train", label_error_score=0.5).model_dump_json()
             for i in (9, 3, 7, 1, 5)]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines))
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8}
                       for i in (1, 3, 5, 7, 9)], "annotations": [], "categories": CATS}
    assert [i.image_id for i in run(path, coco, budget=3, strategy="label_error").items] == [
        1, 3, 5]


def test_random_strategy_is_seeded(tmp_path):
    path, coco = make(tmp_path)
    a = run(path, coco, budget=6, strategy="random", seed=4)
    assert {i.reason for i in a.items} == {"audit"} and len(a.items) == 6
    assert a == run(path, coco, budget=6, strategy="random", seed=4)
    assert a != run(path, coco, budget=6, strategy="random", seed=5)


def test_per_class_quota_displaces_lowest_ranked(tmp_path):
    path, coco = make(tmp_path, rare_every=10)  # triangles: train 10,20,30,40; pool 50,60
    sel = SelectionConfig(strategy="label_error", audit_fraction=0.0,
                          per_class_quota={"triangle": 3})
    m = run(path, coco, selection=sel, budget=5)
    ids = [i.image_id for i in m.items]
    assert len(ids) == 5
    # ranked picks were 1..5; none holds a triangle: the best-ranked triangle images
    # (by label-error score: 10, 20, 30) displace 5, 4, 3
    assert ids[:2] == [1, 2]
    assert [(i.image_id, i.reason) for i in m.items[2:]] == [
        (10, "quota"), (20, "quota"), (30, "quota")]


def test_quota_counts_pool_images_by_predictions(tmp_path):
    path, coco = make(tmp_path, rare_every=10)
    sel = SelectionConfig(strategy="uncertainty", audit_fraction=0.0,
                          per_class_quota={"triangle": 1})
    m = run(path, coco, selection=sel, budget=3)  # pool 41, 42, 43 -> 50 displaces 43
    assert [(i.image_id, i.reason) for i in m.items] == [
        (41, "uncertainty"), (42, "uncertainty"), (50, "quota")]


def test_quota_already_met_changes_nothing(tmp_path):
    path, coco = make(tmp_path, rare_every=2)
    sel = SelectionConfig(strategy="label_error", audit_fraction=0.0,
                          per_class_quota={"triangle": 2})
    m = run(path, coco, selection=sel, budget=5)
    assert [i.image_id for i in m.items] == [1, 2, 3, 4, 5]


def test_unknown_quota_class_and_strategy_raise(tmp_path):
    path, coco = make(tmp_path)
    with pytest.raises(ValueError, match="hexagon"):
        run(path, coco, selection=SelectionConfig(per_class_quota={"hexagon": 1}), budget=3)
    with pytest.raises(ValueError, match="strategy"):
        run(path, coco, budget=3, strategy="best")


def test_written_selection_reads_back_and_batches(tmp_path):
    path, coco = make(tmp_path)
    m = run(path, coco, budget=7, strategy="label_error")
    assert m.schema_version == 2  # ROUND_FILE_SCHEMA: selections carry the drift verdict
    out = write_json_atomic(tmp_path / "round" / "selection.json", m)
    assert read_model(SelectionManifest, out) == m
    assert batches(7, 3, out) == [
        {"selection": str(out), "start": 0, "stop": 3},
        {"selection": str(out), "start": 3, "stop": 6},
        {"selection": str(out), "start": 6, "stop": 7},
    ]
    assert batches(0, 3, out) == []
    json.dumps(batches(7, 3, out))  # XCom-safe
    with pytest.raises(ValueError):
        batches(7, 0, out)


def test_bench_metrics_by_hand():
    from hitl_dev.bench.selection import auroc, corrected, precision_recall

    assert precision_recall([1, 2, 3, 4], {2, 4, 9}) == {
        "label_error_precision": 0.5, "label_error_recall": round(2 / 3, 4), "hits": 2,
        "selected": 4}
    assert auroc({1: 0.9, 2: 0.8, 3: 0.1}, {1, 2}) == 1.0
    assert auroc({1: 0.1, 2: 0.8, 3: 0.9}, {1}) == 0.0
    assert auroc({1: 0.5, 2: 0.5}, {1}) == 0.5  # a tie counts half
    noisy = {"images": [], "categories": [], "annotations": [
        {"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}, {"id": 2, "image_id": 2}]}
    truth = {"annotations": [{"id": 1, "image_id": 1, "bbox": [5, 5, 1, 1]},
                             {"id": 3, "image_id": 2}]}
    fixed = corrected(noisy, truth, {1})
    assert sorted((a["id"], a.get("source")) for a in fixed["annotations"]) == [
        (1, "human"), (2, None)]
    assert fixed["annotations"][-1]["bbox"] == [5, 5, 1, 1]


@pytest.mark.parametrize("strategy", ["label_error", "hybrid", "uncertainty", "random"])
def test_images_verified_in_an_earlier_round_are_not_selected_again(tmp_path, strategy):
    path, coco = make(tmp_path, n_train=20, n_pool=10)
    checked = {1, 2, 3, 21, 22}  # the best-ranked of both sides, checked by a person before
    for img in coco["images"]:
        if img["id"] in checked:
            img["hitl_verified_round"] = 2
    m = run(path, coco, selection=SelectionConfig(audit_fraction=0.2, seed=3), budget=10,
            strategy=strategy)
    picked = {i.image_id for i in m.items}
    assert len(picked) == 10 and not picked & checked
    m_all = run(path, coco, selection=SelectionConfig(audit_fraction=0.0), budget=40,
                strategy="random")
    assert len(m_all.items) == 25  # capped by the 30 - 5 images nobody has checked
    m_err = run(path, coco, selection=SelectionConfig(audit_fraction=0.0), budget=40,
                strategy="label_error")
    assert {i.image_id for i in m_err.items} == set(range(4, 21))


def test_hybrid_gives_weakly_suspected_labeled_places_to_the_pool(tmp_path):
    path, coco = make(tmp_path, n_train=20, n_pool=20)  # label-error scores 0.99 .. 0.80
    m = run(path, coco, selection=SelectionConfig(audit_fraction=0.0, min_error_score=0.95),
            budget=10)  # pool_share 0.3 -> 3 pool, but only images 1-5 score >= 0.95
    assert Counter(i.split for i in m.items) == {"train": 5, "pool": 5}
    assert {i.image_id for i in m.items if i.split == "train"} == set(range(1, 6))
    m = run(path, coco, selection=SelectionConfig(audit_fraction=0.0, min_error_score=1.0),
            budget=30)  # nothing strong and the pool short: labeled images fill by score
    assert Counter(i.split for i in m.items) == {"pool": 20, "train": 10}
    assert {i.image_id for i in m.items if i.split == "train"} == set(range(1, 11))


def test_bench_builtin_weights_are_the_shipped_checkpoint():
    """``hitl bench selection --weights builtin`` (the default) warm-starts from the shipped
    base checkpoint; it silently trained from scratch when the bench moved to hitl_dev."""
    from hitl_dev.bench.selection import builtin_weights
    from hitl_plugin.model.train import BUILTIN_BASE

    assert builtin_weights() == BUILTIN_BASE and BUILTIN_BASE.is_file()


def _plan(detected: bool, ood: dict[int, float], **kw):
    from hitl_plugin.model.select import DriftPlan

    return DriftPlan(detected=detected, report="drift.json", ood=ood, **kw)


def test_drift_raises_the_budget_and_reserves_the_most_out_of_distribution(tmp_path):
    path, coco = make(tmp_path)  # 40 train, 20 pool (ids 41..60)
    ood = {i: i / 100 for i in range(41, 61)}  # the last pool images look least familiar
    plain = run(path, coco, budget=6, strategy="hybrid")
    m = run(path, coco, budget=6, strategy="hybrid",
            drift=_plan(True, ood, budget_factor=2.0, budget_cap=0.5, ood_share=0.5))
    assert m.budget == 12 and len(m.items) == 12
    reserved = [i.image_id for i in m.items if i.reason == "drift"]
    assert reserved == [60, 59, 58, 57, 56, 55]  # round(0.5 x 12), highest score first
    assert [i.score for i in m.items if i.reason == "drift"][0] == pytest.approx(0.6)
    assert m.drift.detected and (m.drift.base_budget, m.drift.budget, m.drift.reserved) == (
        6, 12, 6)
    # the strategy fills the rest without the reserved images
    rest = [i.image_id for i in m.items if i.reason != "drift"]
    assert not set(rest) & set(reserved) and len(rest) == 6
    # no drift: the selection is the plain one, with the verdict recorded
    same = run(path, coco, budget=6, strategy="hybrid", drift=_plan(False, ood))
    assert [i.image_id for i in same.items] == [i.image_id for i in plain.items]
    assert same.drift.detected is False and same.drift.reserved == 0
    assert plain.drift is None


def test_drift_budget_cap_and_quotas_keep_the_reserved(tmp_path):
    path, coco = make(tmp_path)
    ood = {i: i / 100 for i in range(41, 61)}
    capped = run(path, coco, budget=6, drift=_plan(True, ood, budget_factor=10.0,
                                                   budget_cap=0.25))
    assert capped.budget == 15  # a quarter of the 60 images
    sel = SelectionConfig(audit_fraction=0.0, per_class_quota={"triangle": 3})
    m = run(path, coco, budget=6, selection=sel,
            drift=_plan(True, ood, budget_factor=2.0, ood_share=0.5))
    assert sum(1 for i in m.items if i.reason == "drift") == 6  # quotas displace others
    assert sum(1 for i in m.items if i.reason == "quota") >= 1
