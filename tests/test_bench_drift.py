"""``hitl bench drift``: its rates and summaries by hand, the command's argument checks, and
one real pool test through the product's score pass (fresh images, the base checkpoint)."""

from __future__ import annotations

import pytest

from hitl_dev.bench import drift as bench


def test_wilson_interval():
    assert bench.wilson(0, 0) is None
    low, high = bench.wilson(5, 100)
    assert low < 0.05 < high and low == pytest.approx(0.0215, abs=1e-3)
    assert bench.wilson(0, 34)[0] == 0.0 and bench.wilson(34, 34)[1] == 1.0


def _row(detected: bool, p: float, fresh: bool | None = None) -> dict:
    row = {"detected": detected, "drifted_images": 0,
           "p_values": {"confidence": 0.5, "box_count": 0.5, "class_mix": 0.5,
                        "embedding": p}}
    if fresh is not None:
        row["fresh_reference"] = {"detected": fresh, "p_values": dict(row["p_values"],
                                                                      embedding=0.4)}
    return row


def test_summarize_detection_by_hand():
    tests = {"none": [_row(True, 0.001, fresh=False)] + [_row(False, 0.3, fresh=False)] * 9,
             "background": [_row(True, 0.002)] * 4,
             "colour": [_row(True, 0.5)] * 3 + [_row(False, 0.5)],
             "scale": [_row(True, 0.5)] * 4, "class_mix": [_row(True, 0.5)] * 4}
    out = bench.summarize_detection(tests, share=0.5)
    assert out["false_alarm"]["rate"] == 0.1 and out["false_alarm"]["pools"] == 10
    assert out["false_alarm"]["by_signal"]["embedding"] == 0.1  # p 0.001 < 0.05 / 4
    assert out["false_alarm_fresh_reference"]["rate"] == 0.0
    assert out["power"]["colour"]["rate"] == 0.75
    assert out["detection_power"] == 0.75  # the lowest over the kinds
    assert out["power"]["background"]["by_signal"]["embedding"] == 1.0


def test_summarize_recovery_divides_by_the_pre_drift_map():
    def arm(name, seed, drifted):
        return {"strategy": name, "seed": seed, "curve": [
            {"map50_95": 0.4, "map50_95_drifted": d, "images_to_people": 40 * r}
            for r, d in enumerate(drifted)]}

    arms = [arm("drift_on", 0, [0.2, 0.3, 0.38]), arm("drift_on", 1, [0.2, 0.3, 0.34]),
            arm("drift_off", 0, [0.2, 0.25, 0.3]), arm("drift_off", 1, [0.2, 0.25, 0.3]),
            arm("random", 0, [0.2, 0.22, 0.24]), arm("random", 1, [0.2, 0.22, 0.24])]
    out = bench.summarize_recovery(arms, {0: 0.4, 1: 0.4}, rounds=2)
    assert out["drift_on"]["recovered_fraction"] == pytest.approx(0.9)
    assert out["drift_on"]["per_seed"] == [0.95, 0.85]
    assert out["drift_off"]["recovered_fraction"] == pytest.approx(0.75)
    assert out["drift_off"]["recovered_std"] == 0.0
    assert out["random"]["map50_95_drifted_mean"] == [0.2, 0.22, 0.24]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--rounds", "1"], "--rounds must be at least 2"),
    (["--share", "1.5"], "--share must be in (0, 1]"),
])
def test_command_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_one_pool_through_the_score_pass_and_the_drift_test(tmp_path):
    """Fresh synthetic pools go through score_images with the drift inputs: a pool in new
    backgrounds is flagged against a held-out set of the original look, by the embeddings."""
    from hitl_plugin.model.train import BUILTIN_BASE

    gen = {"work": tmp_path / "w", "cache": tmp_path / "c", "imgsz": 64, "threads": 2,
           "device": "cpu"}
    held, _ = bench.synth_inputs(str(BUILTIN_BASE), split="heldout", n=60, seed=1,
                                 spec=None, **gen)
    assert set(held.split) == {"heldout"} and len(held) == 60
    spec = {"kinds": ["background"], "share": 1.0}
    result = bench.pool_test(str(BUILTIN_BASE), held, spec=spec, pool_seed=2,
                             fresh_reference_seed=3, **gen)
    assert result["detected"] and result["p_values"]["embedding"] < 0.0125
    assert result["drifted_images"] == bench.POOL_SIZE
    assert result["fresh_reference"]["detected"]  # new backgrounds against any reference
    again = bench.pool_test(str(BUILTIN_BASE), held, spec=spec, pool_seed=2,
                            fresh_reference_seed=3, **gen)
    assert again == result  # the inputs come from the cache: the same test


def test_the_plot_draws_the_committed_results(tmp_path):
    """The benchmark's own results in benchmarks/ have the shape its plot reads."""
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "drift.json")
                        .read_text())
    assert set(result["summary"]) >= {"detection_power", "false_alarm_rate",
                                      "recovered_fraction_after_2", "recovered_std"}
    assert set(result["summary"]["recovered_fraction_after_2"]) == {"drift_on", "drift_off",
                                                                    "random"}
    bench.plot(result, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"
