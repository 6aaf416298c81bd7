"""``hitl bench rounds``: curve interpolation, the summaries, the SIMULATED reviewers' view,
the training cache, and a tiny end-to-end run of the harness (real training, real steps)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from hitl_dev.bench import rounds
from hitl_plugin.schemas import (
    Category,
    LabelBox,
    Prediction,
    SelectedSample,
    SelectionManifest,
)

# -- interpolation and summaries ------------------------------------------------------------


@pytest.mark.parametrize("xs, ys, target, want", [
    ([40, 80, 120], [0.2, 0.3, 0.4], 0.35, 100.0),    # between two points, linearly
    ([40, 80, 120], [0.2, 0.3, 0.4], 0.3, 80.0),      # exactly on a point
    ([40, 80, 120], [0.2, 0.3, 0.4], 0.1, 40.0),      # already there at the start
    ([40, 80, 120], [0.2, 0.3, 0.4], 0.41, None),     # never reached
    ([40, 80, 120, 160], [0.2, 0.36, 0.3, 0.5], 0.35, 40 + 40 * 15 / 16),  # first crossing
])
def test_x_to_reach_interpolates_the_first_crossing(xs, ys, target, want):
    got = rounds.x_to_reach(xs, ys, target)
    assert got == (None if want is None else pytest.approx(want))


def test_mean_std_gap_and_epochs():
    assert rounds.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert rounds.mean_std([0.5]) == (0.5, 0.0)
    assert rounds.mean_std([None, None]) == (None, None)
    assert rounds.gap_closed(0.35, 0.30, 0.40) == 0.5
    assert rounds.gap_closed(0.35, 0.30, 0.30) is None  # no gap to close
    sc = rounds.ACTIVE
    assert rounds.epochs_for(sc, 40) == 60 and rounds.epochs_for(sc, 1000) == sc.min_epochs


def _curve(xs, ys, rare=None):
    return [{"round": k, "images_to_people": x, "human_boxes": 3 * x, "map50_95": y,
             "rare_ap": rare} for k, (x, y) in enumerate(zip(xs, ys))]


def test_summarize_active_ratio_to_random_with_a_censored_seed():
    xs = [40, 80, 120, 160, 200]
    arms = [
        {"strategy": "random", "seed": 0, "curve": _curve(xs, [0.1, 0.2, 0.3, 0.4, 0.5])},
        {"strategy": "random", "seed": 1, "curve": _curve(xs, [0.1, 0.2, 0.3, 0.4, 0.5])},
        # reaches random's 0.5 half-way between 80 and 120 -> 100 / 200 = 0.5
        {"strategy": "default", "seed": 0, "curve": _curve(xs, [0.1, 0.4, 0.6, 0.6, 0.6])},
        # never reaches 0.5: counted at its last point (200 / 200), and said so
        {"strategy": "default", "seed": 1, "curve": _curve(xs, [0.1, 0.2, 0.3, 0.4, 0.45])},
    ]
    out = rounds.summarize_active(arms, [0, 1])
    d = out["strategies"]["default"]
    assert d["per_seed_ratio"] == [0.5, 1.0]
    assert out["active"] == {"label_ratio_to_random": 0.75, "label_ratio_std": 0.3536,
                             "seeds": 2}
    assert d["reached_random_final_in_seeds"] == 1
    assert d["acquired_label_ratio"] == pytest.approx((60 / 160 + 1.0) / 2, abs=1e-4)
    assert out["strategies"]["random"]["label_ratio_to_random"] == 1.0


def test_summarize_correction_gap_closed_and_gain_in_std():
    noisy, truth = {0: 0.30, 1: 0.40}, {0: 0.40, 1: 0.50}
    arms = []
    for seed in (0, 1):
        base = noisy[seed]
        arms.append({"strategy": "default", "seed": seed,
                     "curve": _curve([0, 40, 80, 120], [base, base + 0.03, base + 0.05,
                                                         base + 0.06 + 0.01 * seed])})
        arms.append({"strategy": "random", "seed": seed,
                     "curve": _curve([0, 40, 80, 120], [base, base, base + 0.01,
                                                         base + 0.02 + 0.01 * seed])})
    out = rounds.summarize_correction(arms, [0, 1], noisy, truth, 3)
    c = out["correction"]
    assert c["gap_closed_after_3"]["default"] == pytest.approx(0.65)
    assert c["gap_closed_after_3"]["random"] == pytest.approx(0.25)
    assert c["gap_closed_after_3"]["cleanlab_best"] is None  # not run
    sd = out["strategies"]["default"]["gap_closed_std"][3]
    assert sd == pytest.approx(0.0707, abs=1e-4)
    assert c["gain_in_std"] == pytest.approx(0.4 / sd, rel=1e-2)


# -- the SIMULATED reviewers see what the labeling view shows -------------------------------

CATS = [Category(id=1, name="circle"), Category(id=2, name="square")]


def _manifest(items):
    return SelectionManifest(schema_version=1, dag_id=rounds.DAG_ID, run_id="round0",
                             dataset="bench", version="v0001", model_version="m.pt",
                             categories=CATS, strategy="hybrid", budget=len(items), seed=0,
                             items=items)


def _truth(boxes):
    return {"images": [{"id": 7, "width": 100, "height": 100, "file_name": "p/7.png"},
                       {"id": 8, "width": 100, "height": 100, "file_name": "t/8.png"}],
            "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b}
                            for k, (i, c, b) in enumerate(boxes, start=1)],
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}


def test_a_reviewer_edits_the_model_boxes_shown_for_a_pool_image():
    truth = _truth([(7, 1, [10, 10, 20, 20]), (7, 2, [60, 60, 30, 30])])
    sample = SelectedSample(
        image_id=7, file_name="p/7.png", width=100, height=100, split="pool",
        reason="uncertainty", score=0.9, predictions=[
            Prediction(bbox=[11, 10, 20, 20], category_id=1, score=0.9),  # right, a bit off
            Prediction(bbox=[40, 5, 10, 10], category_id=2, score=0.4),   # on nothing
        ])
    corrections, actions = rounds.review(_manifest([sample]), truth, dag_id=rounds.DAG_ID,
                                         run_id="round0", seed=0, accuracy=1.0)
    assert actions == Counter({"kept": 1, "deleted": 1, "added": 1})
    assert rounds.human_boxes(actions) == 1  # one box drawn; a kept box costs nothing
    (item,) = corrections.items
    assert item.status == "labeled" and item.answer == "edited"
    got = sorted((b.category_id, [round(v, 3) for v in b.bbox]) for b in item.boxes)
    # the kept box is the model's, where the view drew it: not the truth's coordinates
    assert got == [(1, [11.0, 10.0, 20.0, 20.0]), (2, [60.0, 60.0, 30.0, 30.0])]


def test_a_reviewer_fixes_the_current_labels_of_a_labeled_image():
    truth = _truth([(8, 1, [10, 10, 30, 30])])
    sample = SelectedSample(
        image_id=8, file_name="t/8.png", width=100, height=100, split="train",
        reason="label_error", score=0.9,
        labels=[LabelBox(id=3, bbox=[10, 10, 30, 30], category_id=2)],   # the wrong class
        predictions=[Prediction(bbox=[10, 10, 30, 30], category_id=1, score=0.8)])
    corrections, actions = rounds.review(_manifest([sample]), truth, dag_id=rounds.DAG_ID,
                                         run_id="round0", seed=0, accuracy=1.0)
    assert actions == Counter({"relabeled": 1})
    (item,) = corrections.items
    assert [(b.category_id, b.bbox) for b in item.boxes] == [(1, [10.0, 10.0, 30.0, 30.0])]
    # a careless reviewer (accuracy 0) slips on every fix, and the slip is recorded
    _, sloppy = rounds.review(_manifest([sample]), truth, dag_id=rounds.DAG_ID,
                              run_id="round0", seed=0, accuracy=0.0)
    assert sloppy["mistakes"] == 1


# -- the harness, end to end, tiny ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    scenario = dataclasses.replace(
        rounds.ACTIVE, synth={**rounds.ACTIVE.synth, "train": 10, "val": 8, "pool": 24,
                              "imgsz": 64},
        rounds=2, budget=5, passes=20, min_epochs=1, imgsz=64,
        strategies={k: rounds.ACTIVE.strategies[k] for k in ("entropy", "random")})
    work = tmp_path_factory.mktemp("rounds")
    result = rounds.run(scenario, [0], work, weights=None, threads=2)
    return scenario, work, result


def test_rounds_run_the_loop_and_count_people_work(tiny):
    scenario, work, result = tiny
    assert result["complete"] and result["simulated_people"]
    assert {a["strategy"] for a in result["arms"]} == {"entropy", "random"}
    for arm in result["arms"]:
        curve = arm["curve"]
        assert [p["round"] for p in curve] == [0, 1, 2]
        assert [p["images_to_people"] for p in curve] == [10, 15, 20]
        assert [p["labeled_images"] for p in curve] == [10, 15, 20]  # pool images joined
        assert curve[0]["human_boxes"] == 0 and curve[2]["human_boxes"] >= curve[1]["human_boxes"]
        assert all(0.0 <= p["map50_95"] <= 1.0 for p in curve)
        assert curve[0]["selected"]["pool"] == 5
    # round 0 is the same training for every strategy: trained once, reused once
    assert result["trainings"]["trained"] == 5 and result["trainings"]["reused"] == 1
    summary = result["summary"]
    assert summary["active"]["seeds"] == 1
    # random's own ratio is 1, or less where its curve went above its final point earlier
    assert 0 < summary["strategies"]["random"]["label_ratio_to_random"] <= 1.0


def test_a_rerun_reuses_every_training(tiny, tmp_path):
    scenario, work, first = tiny
    # a fresh storage, the same training cache: nothing is trained again
    shutil_work = tmp_path / "again"
    shutil_work.mkdir()
    (shutil_work / "trainings").symlink_to(work / "trainings")
    (shutil_work / "data").symlink_to(work / "data")
    again = rounds.run(scenario, [0], shutil_work, weights=None, threads=2)
    assert again["trainings"]["trained"] == 0 and again["trainings"]["reused"] == 6
    strip = lambda r: [[(p["images_to_people"], p["map50_95"]) for p in a["curve"]]  # noqa: E731
                       for a in r["arms"]]
    assert strip(again) == strip(first)


def test_training_key_follows_labels_and_weights(tiny):
    _, work, _ = tiny
    export = next((work / "seed0" / "entropy").rglob("data.yaml"))
    settings = {"epochs": 1, "seed": 0}
    key = rounds.training_key(export, settings)
    assert rounds.training_key(export, settings) == key
    assert rounds.training_key(export, {**settings, "seed": 1}) != key
    label = next((export.parent / "train" / "labels").glob("*.txt"))
    original = label.read_bytes()
    try:
        label.write_text("0 0.5 0.5 0.2 0.2\n")
        assert rounds.training_key(export, settings) != key
    finally:
        label.write_bytes(original)


def test_the_command_prints_only_json_and_writes_the_plot(tiny, tmp_path, monkeypatch, capfd,
                                                         caplog):
    scenario, work, _ = tiny
    monkeypatch.setitem(rounds.SCENARIOS, "active", scenario)
    out = tmp_path / "r.json"
    caplog.set_level("INFO", logger="hitl_dev.bench.rounds")
    assert rounds.main(["--scenario", "active", "--seeds", "1", "--work", str(work),
                        "--out", str(out)]) == 0
    captured = capfd.readouterr()
    printed = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert printed["summary"]["active"]["seeds"] == 1
    assert json.loads(out.read_text())["summary"] == printed["summary"]
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round 2: 20 labeled" in caplog.text  # progress is logged (to stderr in the CLI)


def test_the_command_needs_a_scenario(capsys):
    with pytest.raises(SystemExit):
        rounds.main([])
    assert "--scenario" in capsys.readouterr().err


def test_plot_marks_the_gap_ends_for_correction(tmp_path):
    arms = [{"strategy": s, "seed": k, "curve": _curve([0, 40], [0.3 + k * 0.01, 0.35])}
            for s in ("default", "random") for k in (0, 1)]
    path = tmp_path / "c.png"
    rounds.plot({"scenario": "correction", "arms": arms, "seeds": [0, 1],
                 "map50_95_noisy": {"0": 0.3}, "map50_95_truth": {"0": 0.4}}, path)
    assert path.stat().st_size > 10_000
    assert Path(path).read_bytes()[:4] == b"\x89PNG"


def test_auto_accept_summary_compares_human_boxes_at_the_same_map():
    def curve(boxes, maps, auto=None):
        return [{"round": k, "images_to_people": 40 * (k + 1), "human_boxes": b,
                 "map50_95": m, **({"auto_accept": auto} if auto and k else {})}
                for k, (b, m) in enumerate(zip(boxes, maps))]
    stats = {"boxes": 50, "wrong": 1, "rare_boxes": 5, "rare_wrong": 1, "missed_true_boxes": 3}
    by = {("default", 0): curve([0, 100, 200], [0.1, 0.2, 0.3]),
          ("default+auto_accept", 0): curve([0, 50, 100], [0.1, 0.25, 0.35], stats)}
    out = rounds.summarize_auto_accept(by, [0])
    # both reach 0.3: without at 200 boxes, with at 50 + 50 * (0.05 / 0.1) = 75
    assert out["per_seed"][0]["human_boxes_with"] == pytest.approx(75.0)
    assert out["human_boxes_saved_fraction"] == pytest.approx(1 - 75 / 200, abs=1e-4)
    assert out["box_error_rate_added"] == pytest.approx(2 / 100)  # two rounds of 50 boxes
    assert out["rare_class_error_rate"] == 0.2 and out["seeds"] == 1


def test_auto_accept_errors_counts_wrong_boxes_against_the_truth():
    from hitl_plugin.schemas import AutoAcceptance, AutoAccepted

    manifest = _manifest([]).model_copy(update={
        "auto_accept": AutoAcceptance(threshold=0.9, source="calibrated"),
        "auto_accepted": [AutoAccepted(image_id=7, file_name="p/7.png", width=100, height=100,
                                       boxes=[Prediction(bbox=[10, 10, 20, 20], category_id=1,
                                                         score=0.95),   # right
                                              Prediction(bbox=[60, 60, 30, 30], category_id=1,
                                                         score=0.93)])]})  # wrong class
    truth = {7: [{"category_id": 1, "bbox": [11, 10, 20, 20]},
                 {"category_id": 2, "bbox": [60, 60, 30, 30]},
                 {"category_id": 2, "bbox": [0, 80, 10, 10]}]}
    got = rounds.auto_accept_errors(manifest, truth, "square")
    assert (got["boxes"], got["wrong"], got["rare_boxes"]) == (2, 1, 0)
    assert got["missed_true_boxes"] == 2
