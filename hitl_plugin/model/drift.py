"""Drift: has the world the pool comes from changed since the model was trained for it?

The drift step runs between score and select. It compares the incoming pool with the
**held-out set**, the labeled sample of the world the model was trained for that it never
trained on. (The training images themselves are a biased reference: the model fits them,
so its confidence there is higher than on any fresh image of the same world, and a test
against them calls every new pool drifted.)

Everything it needs comes from the score pass, which also predicts the held-out images and
keeps the backbone's embedding of every image (:func:`hitl_plugin.model.score.score_images`
with ``drift_out``, through the one Ultralytics adapter): no second inference pass.

**Signals**, each a statistic and a p-value:

- ``confidence``: the per-image mean score of the boxes shown to people (score >=
  ``selection.conf``; images with no such box left out), two-sample Kolmogorov-Smirnov
  (``scipy.stats.ks_2samp``);
- ``box_count``: the number of such boxes per image, the same test;
- ``class_mix``: the classes of all the shown boxes, the chi-square statistic of the two
  samples' box counts per class, with a permutation test over **images** (the images are
  the independent draws; the boxes of one image are not, so a textbook chi-square p-value
  on boxes would be too small). Counting every box, not one class per image (the first
  version: the class of each image's most confident box), measured on the same pools: the
  power on a new class mix rose from 13 to 21 of 21, and the false alarms against a
  pipeline's own held-out set fell from 4 to 1 of 102 (``benchmarks/README.md``);
- ``embedding``: the squared maximum mean discrepancy (MMD, biased V-statistic) between the
  two sets of backbone embeddings, under a Gaussian kernel whose bandwidth is the median
  pairwise distance, with a permutation test:
  ``p = (1 + #{permuted MMD >= observed}) / (1 + permutations)``. The embeddings are first
  whitened on the pooled sample's :data:`MMD_COMPONENTS` leading principal components
  (unit variance each). Without that, a few high-variance directions dominate the kernel,
  the statistic has few degrees of freedom, and the held-out set's own sampling error (it
  is one fixed sample of 200 or so images) looks like drift to every pool: measured, 18 %
  of no-drift pools were flagged against one seed's held-out set (6 % against fresh
  held-out sets), 3 % once whitened, with the same power on new backgrounds, colours and
  scales. Each side is subsampled to at most :data:`MMD_MAX_SAMPLES` images.

**Each pool image is tested once**, by the first round that scores it (the step leaves out
the pool images an earlier round's drift step tested, :func:`hitl_plugin.steps.drift`).
Selection takes the images the model finds hardest, so what a round leaves in the pool is
no sample of the world: on a pool that gets no new images, its mean confidence rises and
its box count falls round after round, and a test of the whole pool calls that drift
(measured in the demo's pipeline: confidence p 0.18, 0.053, then 5e-5 over three rounds on
one pool). A pool with fewer than ``min_images`` new images is not tested.

**Verdict.** ``drift`` when one signal's p-value is below ``alpha / number of signals``
(Bonferroni): the chance of a false alarm on a pool from the held-out set's own world is
at most ``alpha``. ``too_few_images`` when either side has fewer than ``min_images``.

**Out-of-distribution score** of each pool image: the mean Euclidean distance of its
standardized embedding to its ``neighbours`` nearest held-out embeddings. On drift, the
select step reserves ``ood_share`` of the budget for the images with the highest score.

Plain numpy (and scipy for KS); no Airflow, no torch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: The splits of a drift inputs file: the version's train and pool images, the held-out set.
SPLITS: tuple[str, ...] = ("train", "pool", "heldout")
#: The MMD test's sample size per side at most (a random subsample beyond it): the kernel
#: matrix grows with the square of the images.
MMD_MAX_SAMPLES = 1000
#: Principal components the embeddings are whitened on before the MMD test (fewer when the
#: pooled sample has fewer images or features).
MMD_COMPONENTS = 32
#: Bins of the confidence histograms in the report (score 0..1).
CONF_BINS = 10
#: Box counts from this one up share the last bar of the report's histogram.
COUNT_CAP = 10
#: Points per side in the report's 2-D projection of the embeddings.
PROJECTION_POINTS = 200


@dataclass(frozen=True)
class DriftInputs:
    """What the score pass keeps for the drift step, per image (one row each).

    :ivar image_id: the image's id (held-out ids come from the held-out file).
    :ivar split: ``train``, ``pool`` or ``heldout``.
    :ivar n_boxes: boxes at or above ``selection.conf``.
    :ivar confidence: their mean score (NaN without one).
    :ivar class_counts: how many of them each category has (one column per entry of
        ``categories``).
    :ivar embedding: the backbone's pooled feature vector (float32, one row per image).
    :ivar categories: the category ids of the ``class_counts`` columns (sorted).
    """

    image_id: np.ndarray
    split: np.ndarray
    n_boxes: np.ndarray
    confidence: np.ndarray
    class_counts: np.ndarray
    embedding: np.ndarray
    categories: np.ndarray

    #: the per-image arrays (``categories`` describes the columns of ``class_counts``)
    FIELDS = ("image_id", "split", "n_boxes", "confidence", "class_counts", "embedding")
    #: the file's layout; a benchmark's cache key carries it (1: one top class per image)
    VERSION = 2

    def rows(self, keep: np.ndarray) -> DriftInputs:
        """The rows where ``keep`` (a boolean mask) is true."""
        return DriftInputs(*(getattr(self, f)[keep] for f in self.FIELDS), self.categories)

    def of(self, split: str) -> DriftInputs:
        return self.rows(self.split == split)

    def without_pool(self, image_ids: set[int]) -> DriftInputs:
        """These rows but the pool images in ``image_ids``."""
        ids = np.fromiter(image_ids, dtype=np.int64, count=len(image_ids))
        return self.rows(~((self.split == "pool") & np.isin(self.image_id, ids)))

    def counts_of(self, categories: np.ndarray) -> np.ndarray:
        """``class_counts`` with one column per entry of ``categories`` (a superset)."""
        out = np.zeros((len(self), len(categories)), dtype=np.int64)
        out[:, np.searchsorted(categories, self.categories)] = self.class_counts
        return out

    @classmethod
    def concat(cls, *parts: DriftInputs) -> DriftInputs:
        categories = np.unique(np.concatenate(
            [np.asarray(p.categories, dtype=np.int64) for p in parts]))
        arrays = {f: np.concatenate([getattr(p, f) for p in parts])
                  for f in cls.FIELDS if f != "class_counts"}
        counts = np.concatenate([p.counts_of(categories) for p in parts])
        return cls(**arrays, class_counts=counts, categories=categories)

    def __len__(self) -> int:
        return len(self.image_id)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays (``.npz``, replaced atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, version=self.VERSION, categories=self.categories,
                            **{f: getattr(self, f) for f in self.FIELDS})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DriftInputs:
        with np.load(path, allow_pickle=False) as data:
            if "class_counts" not in data:
                raise ValueError(
                    f"{path}: a drift inputs file of an older airflow-hitl (one top class "
                    "per image, no class_counts): score the round again to rewrite it")
            return cls(data["image_id"], data["split"].astype(str), data["n_boxes"],
                       data["confidence"], data["class_counts"], data["embedding"],
                       data["categories"])

    @classmethod
    def from_rows(cls, rows: list[tuple[int, str, list[dict], list[float]]],
                  conf: float) -> DriftInputs:
        """From ``(image_id, split, boxes, embedding)`` rows (boxes: ``score`` and
        ``category_id``); ``conf``: the shown-box threshold."""
        ids, splits, counts, confs, classes, embs = [], [], [], [], [], []
        for image_id, split, boxes, embedding in rows:
            shown = [b for b in boxes if b["score"] >= conf]
            ids.append(int(image_id))
            splits.append(split)
            counts.append(len(shown))
            confs.append(float(np.mean([b["score"] for b in shown])) if shown else math.nan)
            classes.append([int(b["category_id"]) for b in shown])
            embs.append(np.asarray(embedding, dtype=np.float32))
        dim = len(embs[0]) if embs else 0
        categories = np.asarray(sorted({c for row in classes for c in row}), dtype=np.int64)
        class_counts = np.zeros((len(rows), len(categories)), dtype=np.int64)
        for i, row in enumerate(classes):
            np.add.at(class_counts[i], np.searchsorted(categories, row), 1)
        return cls(np.asarray(ids, dtype=np.int64), np.asarray(splits, dtype="<U8"),
                   np.asarray(counts, dtype=np.int64), np.asarray(confs, dtype=np.float64),
                   class_counts,
                   np.stack(embs) if embs else np.zeros((0, dim), dtype=np.float32),
                   categories)


# -- the statistics -----------------------------------------------------------------------


def ks_test(reference: np.ndarray, sample: np.ndarray) -> dict:
    """Two-sample KS test of two 1-D samples (NaNs dropped).

    :return: ``{"test": "ks", "statistic", "p_value", "n_reference", "n_pool",
        "reference_mean", "pool_mean"}``; statistic and p-value None when a side is empty.
    """
    from scipy.stats import ks_2samp

    a = np.asarray(reference, dtype=float)
    b = np.asarray(sample, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"test": "ks", "statistic": None, "p_value": None, "n_reference": int(a.size),
           "n_pool": int(b.size),
           "reference_mean": round(float(a.mean()), 4) if a.size else None,
           "pool_mean": round(float(b.mean()), 4) if b.size else None}
    if a.size and b.size:
        result = ks_2samp(a, b)
        out["statistic"] = round(float(result.statistic), 6)
        out["p_value"] = float(result.pvalue)
    return out


def _chi2_rows(ref: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Pearson's chi-square of the 2 x C tables ``[ref_k, total - ref_k]`` (rows of ``ref``:
    class counts of the reference side; ``total``: the pooled counts)."""
    other = total - ref
    cols = total.astype(float)
    n = cols.sum()
    rows = np.stack([ref.sum(axis=1), other.sum(axis=1)], axis=1).astype(float)
    stat = np.zeros(len(ref))
    for side, observed in ((0, ref), (1, other)):
        expected = rows[:, side:side + 1] * cols / n
        with np.errstate(divide="ignore", invalid="ignore"):
            stat += np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0).sum(1)
    return stat


def class_test(reference: np.ndarray, sample: np.ndarray, *, permutations: int = 500,
               seed: int = 0, categories: np.ndarray | None = None) -> dict:
    """Do two samples of images show the classes in the same proportions?

    ``reference`` and ``sample``: one row per image, the count of its boxes per class (the
    columns the same categories). The statistic is Pearson's chi-square of the two samples'
    summed box counts per class (classes with fewer than 5 boxes in both together pooled
    into one); the p-value comes from permuting the images between the samples, ``p = (1 +
    #{permuted >= observed}) / (1 + permutations)``: exact under exchangeable images
    however the boxes of one image depend on each other, where the textbook chi-square
    p-value would count correlated boxes as independent draws.

    :param categories: the column's category ids (for the shares; default 0, 1, ...).
    :return: ``{"test": "chi2_permutation", "statistic", "p_value", "permutations",
        "dof", "n_reference", "n_pool", "boxes_reference", "boxes_pool",
        "reference_shares", "pool_shares"}`` (box shares per category id).
    """
    a = np.asarray(reference, dtype=np.int64)
    b = np.asarray(sample, dtype=np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"class_test takes two (images x classes) count arrays with the "
                         f"same columns, not shapes {a.shape} and {b.shape}")
    cats = (np.arange(a.shape[1]) if categories is None
            else np.asarray(categories, dtype=np.int64))
    sum_a, sum_b = a.sum(axis=0), b.sum(axis=0)

    def shares(sums: np.ndarray) -> dict[str, float]:
        total = sums.sum()
        return ({str(int(c)): round(float(v / total), 4) for c, v in zip(cats, sums)}
                if total else {})

    out = {"test": "chi2_permutation", "statistic": None, "p_value": None,
           "permutations": permutations, "dof": None, "n_reference": len(a),
           "n_pool": len(b), "boxes_reference": int(sum_a.sum()),
           "boxes_pool": int(sum_b.sum()), "reference_shares": shares(sum_a),
           "pool_shares": shares(sum_b)}
    if not len(a) or not len(b) or not sum_a.sum() or not sum_b.sum():
        return out
    pooled = np.concatenate([a, b])
    rare = pooled.sum(axis=0) < 5
    if rare.any():
        pooled = np.concatenate([pooled[:, ~rare], pooled[:, rare].sum(axis=1, keepdims=True)],
                                axis=1)
    pooled = pooled[:, pooled.sum(axis=0) > 0]
    if pooled.shape[1] < 2:
        out.update(statistic=0.0, p_value=1.0, dof=0)
        return out
    total = pooled.sum(axis=0)
    observed = float(_chi2_rows(pooled[:len(a)].sum(axis=0, keepdims=True), total)[0])
    rng = np.random.default_rng(seed)
    member = np.zeros((permutations, len(pooled)), dtype=np.int64)
    for row in member:  # which images play the reference in each permutation
        row[rng.choice(len(pooled), len(a), replace=False)] = 1
    null = _chi2_rows(member @ pooled, total)
    exceed = int(np.sum(null >= observed - 1e-9))
    out.update(statistic=round(observed, 6), p_value=(1 + exceed) / (1 + permutations),
               dof=int(pooled.shape[1] - 1))
    return out


def standardize(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Center and scale every array by the reference's per-feature mean and std (features
    that do not vary in the reference are scaled by 1)."""
    ref = np.asarray(reference, dtype=np.float64)
    mean = ref.mean(axis=0) if len(ref) else 0.0
    std = ref.std(axis=0) if len(ref) else 1.0
    std = np.where(np.asarray(std) > 1e-8, std, 1.0)
    return [(np.asarray(x, dtype=np.float64) - mean) / std for x in (ref, *others)]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def whiten(z: np.ndarray, components: int) -> np.ndarray:
    """``z``'s coordinates on its ``components`` leading principal axes, each scaled to unit
    variance (fewer axes when ``z`` has fewer images or features, none of zero variance)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.mean(axis=0)
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    k = int(min(components, np.sum(sv > 1e-8 * (sv[0] if len(sv) else 0.0))))
    return u[:, :max(k, 1)] * math.sqrt(len(z))


def mmd_test(reference: np.ndarray, sample: np.ndarray, *, permutations: int = 500,
             seed: int = 0, max_samples: int = MMD_MAX_SAMPLES,
             components: int | None = MMD_COMPONENTS) -> dict:
    """MMD permutation test of two samples of vectors (rows).

    The pooled sample is standardized and whitened on its ``components`` leading principal
    axes (None: standardized only); Gaussian kernel, bandwidth the median pairwise distance;
    biased MMD^2 ``s^T K s`` with ``s = (1/n, ..., -1/m, ...)``, so that all the
    permutations are one matrix product. Every transform is computed on the pooled sample,
    the same under every permutation, so the test keeps its level.

    :return: ``{"test": "mmd", "statistic", "p_value", "permutations", "bandwidth",
        "n_reference", "n_pool"}``.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(sample, dtype=np.float64)
    if len(x) > max_samples:
        x = x[np.sort(rng.choice(len(x), max_samples, replace=False))]
    if len(y) > max_samples:
        y = y[np.sort(rng.choice(len(y), max_samples, replace=False))]
    n, m = len(x), len(y)
    out = {"test": "mmd", "statistic": None, "p_value": None, "permutations": permutations,
           "bandwidth": None, "components": components, "n_reference": n, "n_pool": m}
    if n < 2 or m < 2:
        return out
    # standardized by the pooled sample (not the reference alone), so that the transform is
    # the same under every permutation and the test stays exact
    z = standardize(np.concatenate([x, y]))[0]
    if components is not None:
        z = whiten(z, components)
    d2 = _sq_dists(z, z)
    upper = d2[np.triu_indices(n + m, k=1)]
    median = float(np.median(upper))
    bandwidth = math.sqrt(median) if median > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * bandwidth * bandwidth))
    signs = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(signs @ kernel @ signs)
    # every column a permutation of the signs (the labels of the pooled sample)
    perm = np.stack([rng.permutation(signs) for _ in range(permutations)], axis=1)
    null = np.einsum("ip,ip->p", perm, kernel @ perm)
    # ties count against drift; a tiny tolerance for floating point
    exceed = int(np.sum(null >= observed - 1e-12))
    out.update(statistic=round(observed, 8), p_value=(1 + exceed) / (1 + permutations),
               bandwidth=round(bandwidth, 6))
    return out


def ood_scores(reference: np.ndarray, sample: np.ndarray, *, neighbours: int = 5
               ) -> np.ndarray:
    """Each sample row's mean distance to its ``neighbours`` nearest reference rows, in the
    reference's standardized feature space (higher: farther from the reference's world)."""
    if len(sample) == 0 or len(reference) == 0:
        return np.zeros(len(sample))
    ref, smp = standardize(reference, sample)
    k = min(neighbours, len(ref))
    out = np.empty(len(smp))
    for start in range(0, len(smp), 512):  # bounded memory for large pools
        d = np.sqrt(_sq_dists(smp[start:start + 512], ref))
        out[start:start + 512] = np.sort(d, axis=1)[:, :k].mean(axis=1)
    return out


def verdict(signals: dict[str, dict], alpha: float) -> tuple[bool, str]:
    """Bonferroni over the signals that have a p-value: ``(detected, reason)``."""
    tested = {k: v for k, v in signals.items() if v.get("p_value") is not None}
    if not tested:
        return False, "no signal could be tested"
    level = alpha / len(tested)
    hits = sorted((v["p_value"], k) for k, v in tested.items() if v["p_value"] < level)
    if hits:
        shown = ", ".join(f"{k} p={p:.2g}" for p, k in hits)
        return True, (f"{shown} < {level:.3g} (alpha {alpha} over {len(tested)} signals)")
    low = min((v["p_value"], k) for k, v in tested.items())
    return False, (f"every p-value >= {level:.3g} (alpha {alpha} over {len(tested)} signals; "
                   f"lowest: {low[1]} p={low[0]:.2g})")


def drift_budget(base: int, n_images: int, *, factor: float, cap: float) -> int:
    """The round's budget on drift: ``base x factor``, at most ``cap`` of the images, never
    below ``base`` and never above the images there are."""
    raised = round(base * factor)
    return int(min(n_images, max(base, min(raised, math.floor(cap * n_images)))))


# -- the step's core ----------------------------------------------------------------------


def _hist(values: np.ndarray, bins: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if not v.size:
        return [0.0] * (len(bins) - 1)
    counts, _ = np.histogram(np.clip(v, bins[0], bins[-1]), bins=bins)
    return [round(float(c) / v.size, 4) for c in counts]


def _projection(ref: np.ndarray, pool: np.ndarray, seed: int) -> dict:
    """Both sets on the reference's first two principal axes (a few hundred points)."""
    if len(ref) < 3 or len(pool) < 1:
        return {"reference": [], "pool": []}
    r, p = standardize(ref, pool)
    _, _, vt = np.linalg.svd(r - r.mean(axis=0), full_matrices=False)
    axes = vt[:2].T
    rng = np.random.default_rng(seed)

    def pick(a: np.ndarray) -> list[list[float]]:
        idx = np.sort(rng.choice(len(a), min(len(a), PROJECTION_POINTS), replace=False))
        return [[round(float(u), 3), round(float(v), 3)] for u, v in a[idx] @ axes]

    return {"reference": pick(r), "pool": pick(p)}


def detect(inputs: DriftInputs, *, alpha: float = 0.05, permutations: int = 500,
           min_images: int = 30, neighbours: int = 5, seed: int = 0) -> dict:
    """Compare the pool rows of ``inputs`` with its held-out rows.

    :return: the drift report's body: ``verdict`` (``drift``, ``no_drift``,
        ``too_few_images``), ``detected``, ``reason``, ``signals`` (per signal: statistic,
        p-value, sample sizes), ``ood`` (pool image id -> out-of-distribution score),
        ``plots`` (histograms and a 2-D projection for the report), ``seconds``.
    """
    started = time.monotonic()
    ref, pool = inputs.of("heldout"), inputs.of("pool")
    out: dict = {"n_reference": len(ref), "n_pool": len(pool), "alpha": alpha,
                 "signals": {}, "ood": {}, "plots": {}}
    if len(ref) < min_images or len(pool) < min_images:
        out.update(verdict="too_few_images", detected=False,
                   reason=f"{len(pool)} pool and {len(ref)} held-out images: fewer than "
                   f"drift.min_images ({min_images}) on a side, so nothing is tested",
                   seconds=round(time.monotonic() - started, 3))
        return out
    signals = {
        "confidence": ks_test(ref.confidence, pool.confidence),
        "box_count": ks_test(ref.n_boxes, pool.n_boxes),
        "class_mix": class_test(ref.class_counts, pool.class_counts,
                                permutations=permutations, seed=seed + 1,
                                categories=inputs.categories),
        "embedding": mmd_test(ref.embedding, pool.embedding, permutations=permutations,
                              seed=seed),
    }
    detected, reason = verdict(signals, alpha)
    scores = ood_scores(ref.embedding, pool.embedding, neighbours=neighbours)
    ref_scores = ood_scores(ref.embedding, ref.embedding, neighbours=neighbours + 1)
    conf_bins = np.linspace(0.0, 1.0, CONF_BINS + 1)
    count_bins = np.arange(COUNT_CAP + 2) - 0.5
    ood_bins = np.linspace(0.0, float(max(scores.max(initial=0), ref_scores.max(initial=0))
                                      or 1.0), 13)
    out.update(
        verdict="drift" if detected else "no_drift", detected=detected, reason=reason,
        signals=signals,
        ood={str(int(i)): round(float(s), 4) for i, s in zip(pool.image_id, scores)},
        plots={"confidence": {"bins": [round(b, 3) for b in conf_bins.tolist()],
                              "reference": _hist(ref.confidence, conf_bins),
                              "pool": _hist(pool.confidence, conf_bins)},
               "box_count": {"bins": list(range(COUNT_CAP + 1)),
                             "reference": _hist(ref.n_boxes.astype(float), count_bins),
                             "pool": _hist(pool.n_boxes.astype(float), count_bins)},
               "ood": {"bins": [round(b, 3) for b in ood_bins.tolist()],
                       # the held-out images' own scores (leave-one-out: each image's nearest
                       # neighbour is itself, so one more neighbour and the zero distance
                       # counts): the spread an image of the known world has
                       "reference": _hist(ref_scores * (neighbours + 1) / neighbours,
                                          ood_bins),
                       "pool": _hist(scores, ood_bins)},
               "projection": _projection(ref.embedding, pool.embedding, seed)},
        seconds=round(time.monotonic() - started, 3))
    return out
