"""The drift statistics on known distributions: the same world, a shifted one, small samples.

Each rate below is measured on many independent draws in one run and compared with what the
test promises (a false-alarm rate near its level, power near one for a clear shift); the
bounds are binomial, several standard deviations wide, so the tests are not flaky.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hitl_plugin.model.drift import (
    DriftInputs,
    class_test,
    detect,
    drift_budget,
    ks_test,
    mmd_test,
    ood_scores,
    verdict,
)


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def _bound(p: float, n: int, sd: float = 4.0) -> float:
    """p plus ``sd`` binomial standard deviations over n draws."""
    return p + sd * math.sqrt(p * (1 - p) / n)


# -- KS --------------------------------------------------------------------------------


def test_ks_same_distribution_false_alarms_stay_at_the_level():
    rng = np.random.default_rng(1)
    n = 400
    flags = [ks_test(rng.normal(size=200), rng.normal(size=500))["p_value"] < 0.05
             for _ in range(n)]
    assert _rate(flags) <= _bound(0.05, n)


def test_ks_finds_a_shift_in_the_mean():
    rng = np.random.default_rng(2)
    flags = [ks_test(rng.normal(size=200), rng.normal(0.5, 1.0, size=500))["p_value"] < 0.01
             for _ in range(50)]
    assert _rate(flags) >= 0.95


def test_ks_drops_nans_and_reports_sizes_and_means():
    result = ks_test(np.array([0.1, np.nan, 0.3]), np.array([0.9, 0.8, np.nan, np.nan]))
    assert result["n_reference"] == 2 and result["n_pool"] == 2
    assert result["reference_mean"] == pytest.approx(0.2)
    assert result["pool_mean"] == pytest.approx(0.85)
    empty = ks_test(np.array([np.nan]), np.array([1.0]))
    assert empty["p_value"] is None and empty["statistic"] is None


def test_ks_on_counts_with_ties_is_conservative():
    rng = np.random.default_rng(3)
    n = 300
    flags = [ks_test(rng.poisson(3, 200), rng.poisson(3, 500))["p_value"] < 0.05
             for _ in range(n)]
    assert _rate(flags) <= _bound(0.05, n)


# -- class mix: chi-square of the boxes' classes, permutation over images -----------------


def _images(rng, n: int, p: list[float], *, lam: float = 2.5) -> np.ndarray:
    """``n`` images' box counts per class: Poisson boxes, each class drawn from ``p``."""
    return rng.multinomial(rng.poisson(lam, n), p)


def test_class_test_same_mix_false_alarms_stay_at_the_level():
    rng = np.random.default_rng(4)
    n, p = 300, [0.3, 0.3, 0.25, 0.15]
    flags = [class_test(_images(rng, 200, p), _images(rng, 500, p), permutations=199,
                        seed=i)["p_value"] < 0.05 for i in range(n)]
    assert _rate(flags) <= _bound(0.05, n)


def test_class_test_keeps_its_level_when_the_boxes_of_an_image_share_a_class():
    # Every box of an image has the image's class: boxes are not independent draws, and
    # the textbook chi-square on box counts flags about two thirds of these same-world pairs
    # (measured here, 0.65 of 100); permuting images keeps the level.
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(6)

    def images(n: int) -> np.ndarray:
        counts = np.zeros((n, 3), dtype=np.int64)
        counts[np.arange(n), rng.integers(0, 3, n)] = rng.poisson(4, n)
        return counts

    n, naive, flags = 100, [], []
    for i in range(n):
        a, b = images(200), images(500)
        naive.append(chi2_contingency(np.stack([a.sum(0), b.sum(0)]))[1] < 0.05)
        flags.append(class_test(a, b, permutations=199, seed=i)["p_value"] < 0.05)
    assert _rate(flags) <= _bound(0.05, n)
    assert _rate(naive) > 3 * _bound(0.05, n)


def test_class_test_finds_a_new_class_mix_and_reports_box_shares():
    rng = np.random.default_rng(5)
    ref = _images(rng, 200, [0.25] * 4)
    # half the pool in a new mix (70 % one class): the benchmark's strength
    pool = np.concatenate([_images(rng, 250, [0.25] * 4),
                           _images(rng, 250, [0.1] * 3 + [0.7])])
    result = class_test(ref, pool, permutations=499, categories=np.array([1, 2, 3, 4]))
    assert result["p_value"] == pytest.approx(1 / 500)  # no permutation came near
    assert result["pool_shares"]["4"] > 0.4 > 0.3 > result["reference_shares"]["4"]
    assert result["boxes_pool"] == pool.sum() and result["dof"] == 3
    # small samples: 30 images a side still see a strong shift, and keep quiet without one
    small = class_test(_images(rng, 30, [0.25] * 4), _images(rng, 30, [0.05] * 3 + [0.85]))
    assert small["p_value"] < 0.01
    flags = [class_test(_images(rng, 30, [0.25] * 4), _images(rng, 30, [0.25] * 4),
                        permutations=99, seed=i)["p_value"] < 0.05 for i in range(200)]
    assert _rate(flags) <= _bound(0.05, 200)


def test_class_test_pools_rare_categories_and_handles_one_category():
    ref = np.array([[3, 0, 0]] * 50 + [[0, 1, 0]])  # 2nd class seen once, 3rd twice: pooled
    pool = np.array([[3, 0, 0]] * 60 + [[0, 0, 2]])
    assert class_test(ref, pool)["p_value"] > 0.05
    same = class_test(np.ones((10, 1), dtype=int), np.ones((20, 1), dtype=int))
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0
    assert class_test(np.zeros((0, 2), dtype=int), np.ones((3, 2), dtype=int))["p_value"] \
        is None
    no_boxes = class_test(np.zeros((40, 2), dtype=int), np.ones((40, 2), dtype=int))
    assert no_boxes["p_value"] is None and no_boxes["boxes_reference"] == 0


# -- MMD --------------------------------------------------------------------------------


def test_mmd_same_distribution_false_alarms_stay_at_the_level():
    rng = np.random.default_rng(6)
    n = 200
    flags = [mmd_test(rng.normal(size=(120, 16)), rng.normal(size=(200, 16)),
                      permutations=200, seed=i)["p_value"] < 0.05 for i in range(n)]
    assert _rate(flags) <= _bound(0.05, n)


def test_mmd_finds_a_shift_in_a_few_features():
    rng = np.random.default_rng(7)
    flags = []
    for i in range(20):
        ref, pool = rng.normal(size=(200, 64)), rng.normal(size=(500, 64))
        pool[:, :4] += 0.4  # 4 of 64 features shifted by 0.4 sd
        flags.append(mmd_test(ref, pool, permutations=200, seed=i)["p_value"] < 0.01)
    assert _rate(flags) >= 0.95


def test_mmd_p_value_floor_and_small_samples():
    rng = np.random.default_rng(8)
    far = mmd_test(rng.normal(size=(30, 4)), rng.normal(5.0, 1.0, size=(30, 4)),
                   permutations=99, seed=0)
    assert far["p_value"] == pytest.approx(1 / 100)  # nothing exceeds it: the floor
    assert far["bandwidth"] > 0 and far["statistic"] > 0
    tiny = mmd_test(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))
    assert tiny["p_value"] is None
    # small samples from one world: a p-value, and no drift on most draws
    small = [mmd_test(rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), permutations=99,
                      seed=i)["p_value"] for i in range(40)]
    assert all(0 < p <= 1 for p in small) and _rate([p < 0.05 for p in small]) <= 0.2


def test_mmd_subsamples_large_sets_reproducibly():
    rng = np.random.default_rng(9)
    ref, pool = rng.normal(size=(300, 8)), rng.normal(size=(400, 8))
    a = mmd_test(ref, pool, permutations=50, seed=3, max_samples=100)
    b = mmd_test(ref, pool, permutations=50, seed=3, max_samples=100)
    assert a == b and a["n_reference"] == 100 and a["n_pool"] == 100


# -- OOD scores, verdict, budget ----------------------------------------------------------


def test_ood_scores_rank_the_new_look_first():
    rng = np.random.default_rng(10)
    ref = rng.normal(size=(200, 16))
    same, new = rng.normal(size=(50, 16)), rng.normal(size=(50, 16)) + 3.0
    scores = ood_scores(ref, np.vstack([same, new]), neighbours=5)
    top = np.argsort(-scores)[:50]
    assert (top >= 50).mean() >= 0.95
    assert len(ood_scores(ref, np.zeros((0, 16)))) == 0


def test_verdict_is_bonferroni_over_the_tested_signals():
    signals = {"a": {"p_value": 0.02}, "b": {"p_value": 0.5}, "c": {"p_value": None}}
    detected, reason = verdict(signals, 0.05)  # level 0.025 over the two tested
    assert detected and "a p=0.02" in reason and "2 signals" in reason
    detected, reason = verdict({"a": {"p_value": 0.02}, "b": {"p_value": 0.5},
                                "c": {"p_value": 0.9}}, 0.05)  # level 0.0167
    assert not detected and "lowest: a" in reason
    assert verdict({"a": {"p_value": None}}, 0.05) == (False, "no signal could be tested")


@pytest.mark.parametrize(("base", "n", "factor", "cap", "expected"), [
    (40, 800, 2.0, 0.25, 80),    # doubled
    (40, 800, 10.0, 0.25, 200),  # capped at a quarter of the images
    (80, 200, 2.0, 0.25, 80),    # the cap is below the base: never less than without drift
    (40, 60, 2.0, 1.0, 60),      # never more images than there are
])
def test_drift_budget(base, n, factor, cap, expected):
    assert drift_budget(base, n, factor=factor, cap=cap) == expected


# -- the step's core on drift inputs ------------------------------------------------------


def _inputs(rng, n_ref: int, n_pool: int, *, shift: float = 0.0) -> DriftInputs:
    n = n_ref + n_pool
    split = np.array(["heldout"] * n_ref + ["pool"] * n_pool)
    emb = rng.normal(size=(n, 32)).astype(np.float32)
    emb[n_ref:, :8] += shift
    conf = rng.uniform(0.3, 0.9, n)
    conf[n_ref:] -= shift / 10
    n_boxes = rng.poisson(3, n)
    return DriftInputs(np.arange(n), split, n_boxes, conf,
                       rng.multinomial(n_boxes, [1 / 3] * 3), emb, np.array([1, 2, 3]))


def test_detect_same_world_no_drift_and_a_shifted_world_drift(tmp_path):
    rng = np.random.default_rng(11)
    same = detect(_inputs(rng, 150, 300), permutations=200)
    assert same["verdict"] == "no_drift" and not same["detected"]
    assert set(same["signals"]) == {"confidence", "box_count", "class_mix", "embedding"}
    assert len(same["ood"]) == 300
    shifted = detect(_inputs(rng, 150, 300, shift=1.0), permutations=200)
    assert shifted["verdict"] == "drift" and shifted["detected"]
    assert shifted["signals"]["embedding"]["p_value"] < 0.0125
    plots = shifted["plots"]
    assert len(plots["confidence"]["pool"]) == 10 and sum(plots["confidence"]["pool"]) == \
        pytest.approx(1.0, abs=1e-3)
    assert len(plots["projection"]["pool"]) == 200
    # the inputs file round-trips
    inputs = _inputs(rng, 5, 7)
    back = DriftInputs.load(inputs.save(tmp_path / "d.npz"))
    assert all(np.array_equal(getattr(back, f), getattr(inputs, f))
               for f in DriftInputs.FIELDS if f != "confidence")
    assert back.categories.tolist() == [1, 2, 3]
    assert list(back.split) == list(inputs.split)


def test_detect_too_few_images_tests_nothing():
    rng = np.random.default_rng(12)
    result = detect(_inputs(rng, 10, 300), min_images=30)
    assert result["verdict"] == "too_few_images" and not result["detected"]
    assert "10 held-out" in result["reason"] and result["signals"] == {}


def test_from_rows_summarizes_the_shown_boxes():
    rows = [(1, "pool", [{"score": 0.9, "category_id": 2}, {"score": 0.5, "category_id": 1},
                         {"score": 0.1, "category_id": 3}], [0.0, 1.0]),
            (2, "heldout", [{"score": 0.2, "category_id": 1}], [1.0, 0.0])]
    inputs = DriftInputs.from_rows(rows, conf=0.25)
    assert inputs.n_boxes.tolist() == [2, 0]
    assert inputs.confidence[0] == pytest.approx(0.7) and math.isnan(inputs.confidence[1])
    assert inputs.categories.tolist() == [1, 2] and inputs.class_counts.tolist() == [[1, 1],
                                                                                  [0, 0]]
    assert inputs.embedding.shape == (2, 2) and inputs.of("pool").image_id.tolist() == [1]


def test_concat_aligns_the_categories_and_an_old_file_is_refused(tmp_path):
    box = [0.0, 1.0]
    pool = DriftInputs.from_rows([(1, "pool", [{"score": 0.9, "category_id": 3}], box)], 0.25)
    held = DriftInputs.from_rows([(2, "heldout", [{"score": 0.9, "category_id": 1},
                                                  {"score": 0.8, "category_id": 1}], box)],
                                 0.25)
    both = DriftInputs.concat(held, pool)
    assert both.categories.tolist() == [1, 3]
    assert both.class_counts.tolist() == [[2, 0], [0, 1]]
    assert both.of("pool").class_counts.tolist() == [[0, 1]]
    old = tmp_path / "old.npz"
    np.savez(old, image_id=[1], split=["pool"], n_boxes=[1], confidence=[0.9],
             top_class=[3], embedding=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="older airflow-hitl.*score the round again"):
        DriftInputs.load(old)
