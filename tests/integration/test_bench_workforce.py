"""``hitl bench workforce`` end to end on a small round: its interface and its measurements
(the real Label Studio of the test session, four SIMULATED people)."""

from __future__ import annotations

import json

from hitl_dev.bench.workforce import main

SUMMARY_KEYS = {"accuracy_error_max", "accuracy_tolerance", "consensus_error_reduction",
                "weak_flagged", "overlap_cost_fraction", "gold_boxes_per_person"}


def test_workforce_bench_measures_people_and_consensus(label_studio, tmp_path, capsys):
    out = tmp_path / "wf.json"
    rc = main(["--seeds", "1", "--seed", "7", "--url", label_studio.url, "--token",
               label_studio.token, "--work", str(label_studio.root), "--train", "48",
               "--gold-images", "16", "--budget", "16", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)  # stdout carries only the JSON
    assert printed == json.loads(out.read_text())
    summary = printed["summary"]
    assert SUMMARY_KEYS <= set(summary)
    assert printed["simulated_people"] is True
    (seed,) = printed["seeds"]
    assert seed["wait"]["status"] == "success" and not seed["workforce_errors"]
    assert seed["gold_tasks"] == 16 and seed["overlapped_tasks"] == 8
    people = {p["person"].split("-s")[0]: p for p in seed["people"]}
    assert set(people) == {"sim-ada", "sim-bo", "sim-cy", "sim-dee"}
    # every gold task went to 3 of the 4 people
    assert sum(p["gold_boxes"] for p in people.values()) > 0
    assert all(p["measured_accuracy"] is not None for p in people.values())
    # the weak person (0.6) is measured below the careful ones (0.95) and flagged
    assert people["sim-dee"]["measured_accuracy"] < min(
        people[n]["measured_accuracy"] for n in ("sim-ada", "sim-bo", "sim-cy"))
    assert summary["weak_flagged"] is True and summary["others_flagged"] == []
    # the overlap costs k - 1 extra answers on its share of the real tasks
    assert summary["overlap_cost_fraction"] == (3 - 1) * 8 / 16
    errors = seed["box_errors_overlapped"]
    assert errors["true_boxes"] > 0 and errors["single_answer_k1"] > 0
    assert summary["consensus_error_reduction"] == round(
        1 - errors["consensus_k3"] / errors["single_answer_k1"], 4)
