"""Choose the images people see this round: budgeted, per-class quotas, a random audit.

Input is the scores JSONL of :mod:`hitl_plugin.model.score`; output a
:class:`~hitl_plugin.schemas.SelectionManifest` (``selection.json`` in the round folder).

**Budget.** ``budget`` (argument) else ``selection.budget`` else ``round(budget_fraction x
number of train + pool images)``, capped by the number of scored images.

**Strategies** (``selection.strategy`` unless overridden):

- ``label_error``: labeled (train) images by ``label_error_score``, highest first.
- ``uncertainty``: pool images by ``uncertainty[selection.uncertainty]``, highest first;
  when the pool runs out, labeled images by the same measure.
- ``hybrid``: ``round(pool_share x n)`` pool images by uncertainty and the rest labeled
  images by label-error score (``n`` = budget minus the audit); a side that runs short
  leaves its places to the other. Only labeled images with a label-error score of at least
  ``min_error_score`` count on the labeled side: on a clean labeled start a weak model finds
  a little suspicion on many images (16 of 40 clean images scored >= 0.5 after a first
  40-image training), and reviewing those labels nothing. If both sides run short, the
  rest of the labeled images fill the budget by score.
- ``random``: the whole budget drawn uniformly from train + pool (reason ``audit``; no
  quotas: it is the baseline).

**Checked once.** An image a person verified in an earlier round (``hitl_verified_round``,
stamped by the merge) is not selected again, by any strategy: people's time goes to images
nobody has checked yet.

**Drift** (the drift step's verdict, ``drift``): when the pool has drifted from the held-out
set's world, the budget becomes ``budget x drift.budget_factor``, at most
``drift.budget_cap`` of the train + pool images (never below the budget without drift), and
``round(drift.ood_share x n)`` of the ranked places (``n`` = budget minus the audit) go first
to the pool images with the highest out-of-distribution score (reason ``drift``); the
strategy fills the rest. The random strategy keeps its draw (it is the baseline) but takes
the raised budget.

**Audit.** ``round(audit_fraction x budget)`` images are drawn uniformly from the images the
scores did not choose (the random audit Amazon A2I offers): it measures what the scores miss.

**Per-class quotas.** ``per_class_quota`` maps a category *name* to a minimum number of
selected images containing it. An image contains a class when one of its labels has it
(train images) or one of its predictions at or above ``selection.conf`` has it (pool
images: they have no labels). After the ranked fill, each class short of its quota (in name
order) takes the best-ranked unselected images containing it; each displaces the
lowest-ranked ranked pick whose removal breaks no quota already met. Such images have
reason ``quota``. A budget too small for every quota is filled as far as it goes, and the
shortfall is logged.

**Auto-accept** (``auto_accept``, from ``selection.auto_accept``): after the people's
picks, the pool images whose every shown box (score >= ``selection.conf``, at least one)
reaches the threshold are labeled by the model alone (``auto_accepted``), most confident
first (by their weakest box), up to ``selection.auto_accept_max_images`` (default: the
budget). See :mod:`hitl_plugin.model.autoaccept`.

**Determinism.** Ties break by image id; the random draws use ``random.Random(seed)`` over
images sorted by id, so the same scores and seed give the same manifest.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from hitl_plugin.config import STRATEGIES, SelectionConfig
from hitl_plugin.model.autoaccept import accepts, weakest_shown
from hitl_plugin.model.score import read_scores
from hitl_plugin.schemas import (
    ROUND_FILE_SCHEMA,
    AutoAcceptance,
    AutoAccepted,
    Batch,
    Category,
    DriftApplied,
    ImageScore,
    LabelBox,
    SelectedSample,
    SelectionManifest,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DriftPlan:
    """What the drift step asks of the selection (:func:`hitl_plugin.steps.select` reads it
    from ``drift.json`` and the ``drift`` config)."""

    detected: bool
    report: str
    budget_factor: float = 2.0
    budget_cap: float = 0.25
    ood_share: float = 0.5
    #: pool image id -> out-of-distribution score
    ood: dict[int, float] = field(default_factory=dict)


@dataclass
class _Row:
    image_id: int
    split: str
    label_error: float
    uncertainty: float
    classes: frozenset[int] = field(default_factory=frozenset)
    #: pool images: the weakest shown box's score (None: no box shown)
    weakest: float | None = None


def resolve_budget(
    selection: SelectionConfig, n_images: int, budget: int | float | None = None
) -> int:
    """The number of images to select.

    :param budget: a count, or a fraction in (0, 1) of ``n_images``; None: the config's.
    """
    if budget is None:
        budget = selection.budget
    if budget is None:
        value = round(selection.budget_fraction * n_images)
    elif isinstance(budget, float) and 0.0 < budget < 1.0:
        value = round(budget * n_images)
    else:
        value = int(budget)
    if value < 0:
        raise ValueError(f"budget must be >= 0, got {budget!r}")
    return min(value, n_images)


def _ranked(rows: list[_Row], key: str) -> list[_Row]:
    return sorted(rows, key=lambda r: (-getattr(r, key), r.image_id))


def select_samples(
    scores_path: str | os.PathLike[str],
    coco: dict,
    *,
    selection: SelectionConfig,
    dag_id: str,
    run_id: str,
    dataset: str,
    version: str,
    model_version: str,
    budget: int | float | None = None,
    strategy: str | None = None,
    seed: int | None = None,
    auto_accept: AutoAcceptance | None = None,
    exclude: Collection[int] = (),
    drift: DriftPlan | None = None,
) -> SelectionManifest:
    """Select the round's images from a scores file.

    :param scores_path: JSONL of :class:`ImageScore` (from ``score_images``).
    :param coco: the dataset version scored (image sizes, file names, labels, categories).
    :param selection: the pipeline's selection settings.
    :param budget: overrides the config: a count, or a fraction in (0, 1).
    :param strategy: overrides ``selection.strategy``.
    :param seed: overrides ``selection.seed`` (audit draw, random strategy).
    :param auto_accept: the round's auto-accept threshold (None: off).
    :param exclude: image ids never to select (the round's gold images: they go to people
        as gold tasks).
    :param drift: the drift step's verdict and settings (None: no drift step ran). On drift
        the budget rises and a share of it goes to the most out-of-distribution pool images.
    :return: the manifest (not yet written: the select step writes it).
    """
    strategy = strategy or selection.strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    seed = selection.seed if seed is None else int(seed)
    rng = random.Random(seed)
    images = {img["id"]: img for img in coco["images"]}
    label_classes: dict[int, set[int]] = {}
    labels: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        label_classes.setdefault(ann["image_id"], set()).add(ann["category_id"])
        labels.setdefault(ann["image_id"], []).append(ann)
    name_to_id = {c["name"]: c["id"] for c in coco["categories"]}
    unknown = sorted(set(selection.per_class_quota) - set(name_to_id))
    if unknown:
        raise ValueError(f"per_class_quota names unknown categories: {', '.join(unknown)}")
    quota = {name_to_id[n]: q for n, q in sorted(selection.per_class_quota.items()) if q > 0}

    rows: list[_Row] = []
    verified = 0
    excluded = set(exclude)
    for rec in read_scores(scores_path):
        if rec.image_id not in images:
            raise ValueError(f"{scores_path}: image id {rec.image_id} is not in version {version}")
        if images[rec.image_id].get("hitl_verified_round") is not None:
            verified += 1
            continue
        if rec.image_id in excluded:
            continue
        if rec.split == "train":
            classes = frozenset(label_classes.get(rec.image_id, ()))
        else:
            classes = frozenset(p.category_id for p in rec.predictions
                                if p.score >= selection.conf)
        rows.append(_Row(rec.image_id, rec.split, rec.label_error_score,
                         float(rec.uncertainty.get(selection.uncertainty, 0.0)), classes,
                         weakest_shown(rec.predictions, selection.conf)))
    rows.sort(key=lambda r: r.image_id)
    n_images = sum(1 for img in coco["images"]
                   if img.get("hitl_split", "train") in ("train", "pool"))
    total = resolve_budget(selection, n_images, budget)
    base_budget = total
    if drift is not None and drift.detected:
        from hitl_plugin.model.drift import drift_budget

        total = drift_budget(total, n_images, factor=drift.budget_factor, cap=drift.budget_cap)
        log.info("drift detected: budget %s -> %s (x%s, at most %s of %s images)",
                 base_budget, total, drift.budget_factor, drift.budget_cap, n_images)
    total = min(total, len(rows))

    train = [r for r in rows if r.split == "train"]
    pool = [r for r in rows if r.split == "pool"]
    picks: list[tuple[_Row, str, float]] = []  # (row, reason, score), in rank order
    if strategy == "random":
        for r in rng.sample(rows, total):
            picks.append((r, "audit", r.label_error if r.split == "train" else r.uncertainty))
        n_audit = total
    else:
        n_audit = min(round(selection.audit_fraction * total), total)
        n_ranked = total - n_audit
        reserved: list[tuple[_Row, str, float]] = []
        if drift is not None and drift.detected and drift.ood_share > 0:
            # the pool images farthest from the held-out set's world, before any strategy
            far = sorted((r for r in pool if r.image_id in drift.ood),
                         key=lambda r: (-drift.ood[r.image_id], r.image_id))
            reserved = [(r, "drift", drift.ood[r.image_id])
                        for r in far[:round(drift.ood_share * n_ranked)]]
            taken = {r.image_id for r, _, _ in reserved}
            train = [r for r in train if r.image_id not in taken]
            pool = [r for r in pool if r.image_id not in taken]
            n_ranked -= len(reserved)
        by_error = [(r, "label_error", r.label_error) for r in _ranked(train, "label_error")]
        by_unc = [(r, "uncertainty", r.uncertainty) for r in _ranked(pool, "uncertainty")]
        if strategy == "label_error":
            queue = by_error
        elif strategy == "uncertainty":
            queue = by_unc + [(r, "uncertainty", r.uncertainty)
                              for r in _ranked(train, "uncertainty")]
        else:  # hybrid
            strong = sum(1 for _, _, v in by_error if v >= selection.min_error_score)
            n_pool = min(round(selection.pool_share * n_ranked), len(by_unc))
            n_train = min(n_ranked - n_pool, strong)
            n_pool = min(n_ranked - n_train, len(by_unc))
            queue = by_unc[:n_pool] + by_error[:n_train] + by_error[n_train:] + by_unc[n_pool:]
            queue = queue[:n_pool + n_train] + sorted(
                queue[n_pool + n_train:], key=lambda t: (-t[2], t[0].image_id))
        picks = reserved + queue[:n_ranked]
        rest = queue[n_ranked:]
        if quota:
            picks = _apply_quotas(picks, rest, quota)
        chosen = {r.image_id for r, _, _ in picks}
        unchosen = [r for r in rows if r.image_id not in chosen]
        for r in rng.sample(unchosen, min(n_audit, len(unchosen))):
            picks.append((r, "audit", r.label_error if r.split == "train" else r.uncertainty))
    if quota:
        got = Counter(c for r, _, _ in picks for c in r.classes)
        short = {c: q - got[c] for c, q in quota.items() if got[c] < q}
        if short:
            log.warning("per-class quotas not met within budget %s: short by %s", total, short)

    threshold = auto_accept.threshold if auto_accept is not None else None
    auto_ids: list[int] = []
    if threshold is not None:
        chosen = {r.image_id for r, _, _ in picks}
        cap = selection.auto_accept_max_images
        cap = total if cap is None else cap
        confident = sorted((r for r in pool if r.image_id not in chosen
                            and accepts(r.weakest, threshold)),
                           key=lambda r: (-(r.weakest or 0.0), r.image_id))
        auto_ids = [r.image_id for r in confident[:cap]]

    auto_set = set(auto_ids)
    # Second pass over the file: only the chosen images' suspicions and boxes are kept.
    wanted = {r.image_id: (reason, score) for r, reason, score in picks}
    details: dict[int, ImageScore] = {}
    for rec in read_scores(scores_path):
        if rec.image_id in wanted or rec.image_id in auto_set:
            details[rec.image_id] = rec
    items = []
    for r, reason, score in picks:
        img, rec = images[r.image_id], details[r.image_id]
        items.append(SelectedSample(
            image_id=r.image_id, file_name=img["file_name"], width=int(img["width"]),
            height=int(img["height"]), split=r.split, reason=reason, score=round(score, 6),
            suspicions=rec.suspicions, predictions=rec.predictions,
            labels=[LabelBox(id=a["id"], bbox=[float(v) for v in a["bbox"]],
                             category_id=a["category_id"]) for a in labels.get(r.image_id, [])
                    if not a.get("iscrowd")],
            crowd=[LabelBox(id=a["id"], bbox=[float(v) for v in a["bbox"]],
                            category_id=a["category_id"]) for a in labels.get(r.image_id, [])
                   if a.get("iscrowd")]))
    manifest = SelectionManifest(
        schema_version=ROUND_FILE_SCHEMA, dag_id=dag_id, run_id=run_id, dataset=dataset,
        version=version, model_version=model_version,
        categories=[Category(id=c["id"], name=c["name"])
                    for c in sorted(coco["categories"], key=lambda c: c["id"])],
        strategy=strategy, budget=total, seed=seed, items=items, auto_accept=auto_accept,
        drift=None if drift is None else DriftApplied(
            detected=drift.detected, report=drift.report, base_budget=base_budget,
            budget=total, reserved=sum(1 for _, reason, _ in picks if reason == "drift")),
        auto_accepted=[AutoAccepted(
            image_id=i, file_name=images[i]["file_name"], width=int(images[i]["width"]),
            height=int(images[i]["height"]),
            boxes=[p for p in details[i].predictions if p.score >= selection.conf])
            for i in auto_ids])
    log.info("selected %s of %s images (%s; %s verified in earlier rounds left out): %s",
             len(items), len(rows), strategy, verified, dict(Counter(i.reason for i in items)))
    return manifest


def _apply_quotas(
    picks: list[tuple[_Row, str, float]],
    rest: list[tuple[_Row, str, float]],
    quota: dict[int, int],
) -> list[tuple[_Row, str, float]]:
    picks = list(picks)
    counts = Counter(c for r, _, _ in picks for c in r.classes)
    met: set[int] = set()
    for cls in sorted(quota):
        for cand in rest:
            if counts[cls] >= quota[cls]:
                break
            row = cand[0]
            if cls not in row.classes or any(p[0].image_id == row.image_id for p in picks):
                continue
            victim = None
            for k in range(len(picks) - 1, -1, -1):
                r, reason, _ = picks[k]
                if reason in ("quota", "drift") or cls in r.classes:
                    continue
                if any(counts[c] - 1 < quota[c] for c in r.classes if c in met):
                    continue
                victim = k
                break
            if victim is None:
                break
            for c in picks[victim][0].classes:
                counts[c] -= 1
            del picks[victim]
            picks.append((row, "quota", cand[2]))
            for c in row.classes:
                counts[c] += 1
        met.add(cls)
    return picks


def batches(n_items: int, batch_size: int, selection_path: str | os.PathLike[str]) -> list[Batch]:
    """The submit fan-out: ``[{"selection": path, "start": i, "stop": j}, ...]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [
        {"selection": str(selection_path), "start": i, "stop": min(i + batch_size, n_items)}
        for i in range(0, n_items, batch_size)
    ]
