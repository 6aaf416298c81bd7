"""The round report: one summary people read, the plots they look at.

``rounds/<dag_id>/<run_id>/report.json`` and ``report.png`` (mAP50-95 per round of the
pipeline, and the histogram of the model's confidences on the held-out set before and
after the round's corrections). The histograms come from the evaluations the trainings
already ran (``metrics.json``), so the report runs no model.

With the drift step, the report's ``drift`` section gathers its verdict, each signal's test,
statistic and p-value and what the selection did with it (``drift.json`` and the
selection's ``drift``), and ``drift.png`` draws the pool against the held-out set
(confidence, box count, out-of-distribution score, the 2-D embedding projection) from the
histograms the drift step recorded.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from hitl_plugin.config import PipelineConfig
from hitl_plugin.model.evaluate import confidence_histogram
from hitl_plugin.paths import Layout, ModelPaths, RoundPaths
from hitl_plugin.schemas import (
    REPORT_SCHEMA,
    Corrections,
    GateResult,
    MergeResult,
    SelectionManifest,
    TrainResult,
    check_schema,
    read_model,
    write_json_atomic,
)

log = logging.getLogger(__name__)

#: How each drift verdict reads (the report's text, the HITL view).
DRIFT_VERDICTS = {
    "drift": "drift detected",
    "no_drift": "no drift",
    "too_few_images": "not tested: too few images",
    "disabled": "off",
    "unreadable": "drift report unreadable",
}


class _ReportShape(BaseModel):
    """What readers of a report rely on (the rest is free): checked before it is shown."""

    model_config = ConfigDict(extra="allow")

    run_id: str = ""
    selected: int | None = None
    corrections: dict[str, int] = {}
    map50_95_before: float | None = None
    map50_95_after: float | None = None
    new_version: str | None = None
    finished: str = ""


def read_reports(layout: Layout, dag_id: str) -> list[dict]:
    """Every round report of a pipeline, oldest first.

    A round still running has no report and is left out; a report that cannot be read, or
    has the wrong shape, is listed as ``{"run_id", "unreadable": reason}`` so that one bad
    file never hides the others.
    """
    rows = []
    for paths in layout.rounds(dag_id):
        if not paths.report.is_file():
            continue
        try:
            rep = json.loads(paths.report.read_text(encoding="utf-8"))
            check_schema(rep, REPORT_SCHEMA, str(paths.report))
            _ReportShape.model_validate(rep)
        except (OSError, ValueError) as exc:  # ValidationError is a ValueError
            reason = str(exc).splitlines()[0][:200]
            rows.append({"run_id": paths.dir.name, "finished": "", "unreadable": reason})
            continue
        rows.append(rep)
    return sorted(rows, key=lambda r: r.get("finished", ""))


def confidences(model: ModelPaths) -> dict | None:
    """The held-out confidence histogram of a training (from its evaluation; no model run).

    A training evaluated before the histogram was recorded in ``metrics.json`` (0.1.0) has
    it computed once from the evaluation's predictions file, when that is still there.
    """
    try:
        metrics = json.loads(model.metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if metrics.get("confidences"):
        return metrics["confidences"]
    try:
        raw = json.loads(model.predictions.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return confidence_histogram([float(row["score"]) for row in raw])


def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure of ``rows x cols`` panels, drawn off screen (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(ax, edges: list[float], weights: list[float], label: str) -> None:
    """One histogram of ``weights`` per bin between ``edges``, see-through over the others."""
    ax.hist(edges[:-1], bins=edges, weights=weights, alpha=0.6, label=label)


def _legend(ax, drawn: bool, nothing: str) -> None:
    """The panel's legend, or ``nothing`` written across it when nothing was drawn."""
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, nothing, ha="center", va="center", transform=ax.transAxes)


def plot_round(path: Path, rounds: list[dict], before: dict | None, after: dict | None):
    """Draw mAP50-95 per round and the held-out confidence histograms before/after."""
    fig, (ax1, ax2) = _figure(1, 2, (11, 4))
    xs = list(range(1, len(rounds) + 1))
    ax1.plot(xs, [r.get("map50_95_before") for r in rounds], "o-", label="trained this round")
    if any(r.get("map50_95_after") is not None for r in rounds):
        ax1.plot(xs, [r.get("map50_95_after") for r in rounds], "s--",
                 label="retrained on the corrections")
    ax1.set_xlabel("round")
    ax1.set_ylabel("mAP50-95 (held-out set)")
    ax1.set_xticks(xs)
    ax1.set_title("mAP per round")
    ax1.legend()
    for hist, label in ((before, "before"), (after, "after")):
        if not hist:
            continue
        n = hist["bins"]
        _bars(ax2, [i / n for i in range(n + 1)], hist["counts"],
              f"{label} ({sum(hist['counts'])} boxes)")
    ax2.set_xlabel(f"confidence (boxes >= {(before or after or {}).get('min_score', 0.05):g})")
    ax2.set_ylabel("predicted boxes on the held-out set")
    ax2.set_title("Model confidence")
    # nothing: trainings evaluated before the histogram was recorded
    _legend(ax2, bool(before or after), "no confidences recorded")
    _save(fig, path)


def _p(value: float) -> str:
    return f"{value:.2g}"


def plot_drift(path: Path, drift: dict) -> None:
    """Draw the drift step's signals, pool against held-out set (``drift.json``'s
    ``plots``): the per-image confidence and box count, the out-of-distribution score and
    the embeddings on the held-out set's first two principal axes; the title gives the
    verdict and the p-values."""
    plots, signals = drift.get("plots") or {}, drift.get("signals") or {}
    fig, ((conf, count), (ood, proj)) = _figure(2, 2, (11, 8))

    def tested(signal: str) -> str:
        sig = signals.get(signal) or {}
        return (f"{sig['test'].upper()} p={_p(sig['p_value'])}"
                if sig.get("p_value") is not None else "not tested")

    def hist(ax, name: str, edges: list[float], signal: str | None, xlabel: str, title: str):
        data, sig = plots.get(name) or {}, signals.get(signal) or {}
        n_ref = sig.get("n_reference", drift.get("n_reference"))
        n_pool = sig.get("n_pool", drift.get("n_pool"))
        for side, label in (("reference", f"held-out set ({n_ref} images)"),
                            ("pool", f"pool ({n_pool} images)")):
            if data.get(side):
                _bars(ax, edges, data[side], label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of images")
        ax.set_title(f"{title} ({tested(signal)})" if signal else title)
        _legend(ax, bool(data.get("reference") or data.get("pool")), "nothing recorded")

    hist(conf, "confidence", (plots.get("confidence") or {}).get("bins") or [0.0, 1.0],
         "confidence", "mean confidence of the boxes shown to people", "Confidence")
    counts = (plots.get("box_count") or {}).get("bins") or [0]
    hist(count, "box_count", [b - 0.5 for b in counts] + [counts[-1] + 0.5], "box_count",
         "boxes shown to people per image", "Box count")
    count.set_xticks(counts, [*map(str, counts[:-1]), f"{counts[-1]}+"])
    hist(ood, "ood", (plots.get("ood") or {}).get("bins") or [0.0, 1.0], None,
         "out-of-distribution score (distance to the nearest held-out images)",
         "Out-of-distribution score")
    points = plots.get("projection") or {}
    for side, label, marker in (("reference", "held-out set", "o"), ("pool", "pool", "x")):
        xy = points.get(side) or []
        if xy:
            proj.scatter([p[0] for p in xy], [p[1] for p in xy], s=12, alpha=0.6,
                         marker=marker, label=f"{label} ({len(xy)} shown)")
    proj.set_xlabel("first principal axis (held-out embeddings)")
    proj.set_ylabel("second principal axis")
    proj.set_title(f"Backbone embeddings ({tested('embedding')})")
    _legend(proj, bool(points.get("reference") or points.get("pool")),
            "no projection recorded")
    shown = ", ".join(f"{k} p={_p(v['p_value'])}" for k, v in signals.items()
                      if v.get("p_value") is not None)
    verdict = DRIFT_VERDICTS.get(drift.get("verdict"), str(drift.get("verdict")))
    fig.suptitle(f"Drift: {verdict}" + (f" ({shown}; threshold {_threshold(drift):.3g})"
                                        if shown else ""))
    _save(fig, path)


def _threshold(drift: dict) -> float | None:
    """The verdict's p-value threshold: alpha over the signals tested (Bonferroni, as
    :func:`hitl_plugin.model.drift.verdict`), None when none was."""
    tested = [v for v in (drift.get("signals") or {}).values()
              if isinstance(v, dict) and v.get("p_value") is not None]
    alpha = drift.get("alpha", (drift.get("settings") or {}).get("alpha"))
    return alpha / len(tested) if tested and isinstance(alpha, (int, float)) else None


def read_drift(paths: RoundPaths, applied: dict | None = None) -> dict | None:
    """The round's ``drift.json`` (else the report the selection names), or None without
    one; ``{"verdict": "unreadable", "reason"}`` when it cannot be read."""
    path = paths.drift
    if not path.is_file() and applied and applied.get("report"):
        path = Path(applied["report"])
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        check_schema(data, REPORT_SCHEMA, str(path))
    except (OSError, ValueError) as exc:
        log.warning("drift report %s unreadable: %s", path, exc)
        return {"verdict": "unreadable", "detected": bool((applied or {}).get("detected")),
                "reason": f"{path.name} unreadable: {str(exc).splitlines()[0][:200]}"}
    return data


def drift_section(drift: dict | None, applied: dict | None, *, report: Path | None = None,
                  plot: Path | None = None) -> dict | None:
    """The report's ``drift`` section: the verdict and each signal's test, statistic and
    p-value (``drift.json``), and what the selection did (``selection.json``'s ``drift``:
    the budget without drift, the one used, the images reserved for the most
    out-of-distribution pool images). None when the round had no drift step."""
    if drift is None and applied is None:
        return None
    drift = drift or {"verdict": "drift" if applied["detected"] else "no_drift",
                      "reason": "the drift report is missing"}
    applied = applied or {}
    return {
        "verdict": drift.get("verdict"),
        "detected": bool(drift.get("detected", applied.get("detected", False))),
        "reason": drift.get("reason", ""),
        "alpha": drift.get("alpha", (drift.get("settings") or {}).get("alpha")),
        "threshold": _threshold(drift),
        "n_pool": drift.get("n_pool"),
        "n_pool_tested_before": drift.get("n_pool_tested_before", 0),
        "n_reference": drift.get("n_reference"),
        "signals": {name: {k: sig.get(k) for k in ("test", "statistic", "p_value")}
                    for name, sig in (drift.get("signals") or {}).items()
                    if isinstance(sig, dict)},
        "base_budget": applied.get("base_budget"),
        "budget": applied.get("budget"),
        "reserved": applied.get("reserved"),
        "report": str(report) if report else applied.get("report"),
        "plot": str(plot) if plot else None,
    }


def summary_text(rep: dict) -> str:
    sel, cor, fixed = rep["selection"], rep["corrections"], rep["fixed"]
    lines = [
        f"Round {rep['run_id']} of {rep['dag_id']} on dataset {rep['dataset']} "
        f"{rep['base_version']}",
        f"  selected {rep['selected']} images: "
        + ", ".join(f"{n} {k}" for k, n in sorted(sel["by_reason"].items())),
        "    suspected label errors among them: "
        + (", ".join(f"{n} {k}" for k, n in sorted(sel["by_suspicion"].items())) or "none"),
        *_drift_lines(rep.get("drift")),
        f"  corrections received: {cor['labeled']} labeled, {cor['skipped']} skipped, "
        f"{cor['rejected']} rejected",
        f"    answers: {cor.get('confirmed', 0)} confirmed unchanged, {cor.get('edited', 0)} "
        f"edited, {cor.get('empty', 0)} empty; {rep.get('labels_confirmed', 0)} labels "
        "confirmed",
        "  label errors fixed by kind (changes people made to labeled images): "
        + (", ".join(f"{n} {k}" for k, n in sorted(fixed.items())) or "none"),
        f"  new images labeled from the pool: {rep['pool_labeled']} "
        f"({rep['pool_boxes_labeled']} boxes)",
        *_auto_accept_lines(rep.get("auto_accept")),
        *_workforce_lines(rep.get("workforce"), rep.get("annotators") or []),
        f"  mAP50-95 before: {_fmt(rep['map50_95_before'])}   after: "
        f"{_fmt(rep['map50_95_after'])}",
        f"  new dataset version: {rep['new_version']} (parent {rep['base_version']})",
        f"  plot: {rep['plot']}",
    ]
    return "\n".join(lines)


def _drift_lines(drift: dict | None) -> list[str]:
    if not drift:
        return []
    line = (f"  drift: {DRIFT_VERDICTS.get(drift['verdict'], drift['verdict'])}"
            + (f" ({drift['reason']})" if drift.get("reason") else ""))
    if drift.get("budget") is not None:
        line += (f"; budget {drift['base_budget']} -> {drift['budget']}, {drift['reserved']} "
                 "images reserved for the most out-of-distribution"
                 if drift["budget"] != drift["base_budget"] or drift["reserved"]
                 else f"; budget {drift['budget']} unchanged")
    lines = [line]
    tested = {k: s for k, s in drift["signals"].items() if s.get("p_value") is not None}
    if tested:
        lines.append("    p-values: " + ", ".join(f"{k} ({s['test']}) {_p(s['p_value'])}"
                                                  for k, s in tested.items())
                     + f"; threshold {drift['threshold']:.3g} (alpha {drift['alpha']} over "
                     f"{len(tested)} signals); {drift['n_pool']} pool against "
                     f"{drift['n_reference']} held-out images"
                     + (f" ({drift['n_pool_tested_before']} left over from earlier rounds, "
                        "tested then)" if drift.get("n_pool_tested_before") else ""))
    if drift.get("plot"):
        lines.append(f"    drift plot: {drift['plot']}")
    return lines


def _auto_accept_lines(aa: dict | None) -> list[str]:
    if not aa:
        return []
    how = (f"calibrated to precision {aa.get('target_precision')} on the held-out set"
           if aa.get("source") == "calibrated" else "from the config")
    if aa.get("threshold") is None:
        return [f"  auto-accept: off this round (no score reaches the target precision; {how})"]
    return [f"  auto-accepted by the model (score >= {aa['threshold']:.3f}, {how}): "
            f"{aa['images']} pool images, {aa['boxes']} boxes",
            f"    against it: {aa['accepted_boxes_changed_by_people']} accepted boxes changed "
            f"by people in their tasks, {aa['earlier_model_labels_corrected']} earlier "
            "model labels corrected"]


def _workforce_lines(wf: dict | None, people: list[dict]) -> list[str]:
    if not people:
        return []
    lines = [f"  people: {len(people)}; {wf['gold_tasks']} gold tasks "
             f"({wf['gold_planted_errors']} planted errors), {wf['overlapped_tasks']} "
             f"overlapped tasks, {wf['consensus_merged']} merged by consensus; held: "
             + (", ".join(f"{n} {k}" for k, n in sorted(wf["held"].items())) or "none")]
    for row in people:
        ci = row.get("accuracy_ci95")
        acc = "n/a" if row.get("accuracy") is None else (
            f"{row['accuracy']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        lines.append(f"    {row['annotator']}: {row['tasks']} tasks, {row['gold_boxes']} gold "
                     f"boxes, accuracy {acc}, precision {_opt(row.get('precision'))}, "
                     f"agreement {_opt(row.get('agreement'))}, median "
                     f"{_opt(row.get('median_seconds'))} s/task"
                     + (" FLAGGED (answers outside consensus held)" if row["flagged"] else ""))
    return lines


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def read_workers(paths: RoundPaths) -> list[dict]:
    """Which worker ran each task try of a round (``steps.record_worker``), oldest first."""
    rows = []
    for path in sorted(paths.workers.glob("*.json")):
        try:
            rows.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(rows, key=lambda r: str(r.get("started", "")))


def _fmt(value: float | None) -> str:
    return "n/a (no retrain this round)" if value is None else f"{value:.4f}"


def write_round_report(
    layout: Layout,
    config: PipelineConfig,
    *,
    dag_id: str,
    run_id: str,
    base_version: str,
    train: TrainResult,
    gate: GateResult,
    merge: MergeResult,
    retrain: TrainResult | None = None,
) -> dict:
    """Gather the round's results into ``report.json`` and ``report.png`` (and, after a
    drift test, ``drift.png``).

    Reads the round's files through :class:`RoundPaths` (selection, corrections, merge
    report, drift report) and the trainings' evaluations; runs no model.
    """
    paths = layout.round(dag_id, run_id)
    selection = read_model(SelectionManifest, paths.selection)
    applied = selection.drift.model_dump() if selection.drift is not None else None
    drift = read_drift(paths, applied)
    drift_plot = None
    if drift and drift.get("plots"):
        if not paths.drift_plot.is_file():  # the drift step draws it; a round before it did not
            plot_drift(paths.drift_plot, drift)
        drift_plot = paths.drift_plot
    corrections = read_model(Corrections, paths.corrections)
    merge_report = json.loads(Path(merge["report"]).read_text(encoding="utf-8"))
    by_suspicion = Counter(s.kind for item in selection.items for s in item.suspicions)
    people = [c for c in corrections.items if c.source == "human"]
    answers = Counter(c.answer for c in people if c.status == "labeled")
    counts = merge_report["counts"]
    rep = {
        "schema_version": REPORT_SCHEMA,
        "dag_id": dag_id,
        "run_id": run_id,
        "dataset": config.dataset.name,
        "base_version": base_version,
        "new_version": merge["version"],
        "selected": len(selection.items),
        "selection": {
            "by_reason": dict(Counter(item.reason for item in selection.items)),
            "by_suspicion": dict(by_suspicion),
        },
        # the drift step's verdict and signals, and what the selection did with them
        "drift": drift_section(drift, applied, plot=drift_plot,
                               report=paths.drift if paths.drift.is_file() else None),
        "corrections": {
            "labeled": sum(1 for c in people if c.status == "labeled"),
            "skipped": sum(1 for c in people if c.status == "skipped"),
            "rejected": len(corrections.rejected),
            # what people did with the boxes they started from (see Correction.answer)
            "confirmed": answers["confirmed"],
            "edited": answers["edited"],
            "empty": answers["empty"] + sum(1 for r in corrections.rejected
                                            if r.answer == "empty"),
            # regions left out of accepted answers, each with its reason in corrections.json
            "regions_dropped": sum(len(c.dropped) for c in corrections.items),
        },
        # selection.auto_accept: what the model labeled alone, and what people undid of it
        "auto_accept": None if selection.auto_accept is None else {
            **selection.auto_accept.model_dump(),
            "images": counts.get("auto_labeled_images", 0),
            "boxes": counts.get("model_boxes_written", 0),
            "accepted_boxes_changed_by_people": counts.get("accepted_boxes_changed_by_people",
                                                           0),
            "earlier_model_labels_corrected": counts.get("model_labels_corrected", 0),
        },
        # the per-person table (labeling.annotators_per_task, labeling.gold); empty when the
        # round measured nobody
        "annotators": [row.model_dump() for row in corrections.annotators],
        "workforce": {
            "gold_tasks": len(corrections.gold),
            "gold_planted_errors": sum(len(g.planted) for g in selection.gold),
            "overlapped_tasks": sum(1 for i in selection.items if i.annotators > 1
                                    and i.image_id not in {g.image_id for g in selection.gold}),
            "consensus_merged": sum(1 for c in corrections.items if c.annotators),
            "held": dict(Counter(h.kind for h in corrections.held)),
            "flagged": [row.annotator for row in corrections.annotators if row.flagged],
        },
        # which worker ran each task try of the round (hostname and queue)
        "workers": read_workers(paths),
        "labels_confirmed": merge_report["counts"].get("labels_confirmed", 0),
        "fixed": merge_report.get("fixed_by_kind", {}),
        "pool_labeled": merge_report["counts"]["pool_labeled"],
        "pool_boxes_labeled": merge_report["counts"]["pool_boxes_labeled"],
        # boxes people drew or kept in the images merged this round (the HITL view shows it)
        "human_boxes": counts.get("human_boxes_written", 0),
        "map50_95_before": train["metrics"]["map50_95"],
        "map50_95_after": retrain["metrics"]["map50_95"] if retrain else None,
        "promoted": gate["promoted"],
        "plot": str(paths.plot),
        "report": str(paths.report),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    before = confidences(ModelPaths(Path(train["model_dir"])))
    after = confidences(ModelPaths(Path(retrain["model_dir"]))) if retrain else None
    history = [r for r in read_reports(layout, dag_id)
               if r.get("run_id") != run_id and "unreadable" not in r]
    plot_round(paths.plot, history + [rep], before, after)
    rep["text"] = summary_text(rep)
    write_json_atomic(paths.report, rep)
    log.info("round report written to %s", rep["report"])
    return rep
