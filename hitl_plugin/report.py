"""The round report: one summary people read, one plot they look at.

``rounds/<dag_id>/<run_id>/report.json`` and ``report.png`` (mAP50-95 per round of the
pipeline, and the histogram of the model's confidences on the held-out set before and
after the round's corrections). The histograms come from the evaluations the trainings
already ran (``metrics.json``), so the report runs no model.
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


def plot_round(path: Path, rounds: list[dict], before: dict | None, after: dict | None):
    """Draw mAP50-95 per round and the held-out confidence histograms before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
        edges = [i / n for i in range(n + 1)]
        ax2.hist(edges[:-1], bins=edges, weights=hist["counts"], alpha=0.6,
                 label=f"{label} ({sum(hist['counts'])} boxes)")
    ax2.set_xlabel(f"confidence (boxes >= {(before or after or {}).get('min_score', 0.05):g})")
    ax2.set_ylabel("predicted boxes on the held-out set")
    ax2.set_title("Model confidence")
    if before or after:
        ax2.legend()
    else:  # trainings evaluated before the histogram was recorded
        ax2.text(0.5, 0.5, "no confidences recorded", ha="center", va="center",
                 transform=ax2.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_text(rep: dict) -> str:
    sel, cor, fixed = rep["selection"], rep["corrections"], rep["fixed"]
    lines = [
        f"Round {rep['run_id']} of {rep['dag_id']} on dataset {rep['dataset']} "
        f"{rep['base_version']}",
        f"  selected {rep['selected']} images: "
        + ", ".join(f"{n} {k}" for k, n in sorted(sel["by_reason"].items())),
        "    suspected label errors among them: "
        + (", ".join(f"{n} {k}" for k, n in sorted(sel["by_suspicion"].items())) or "none"),
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
    """Gather the round's results into ``report.json`` and ``report.png``.

    Reads the round's files through :class:`RoundPaths` (selection, corrections, merge
    report) and the trainings' evaluations; runs no model.
    """
    paths = layout.round(dag_id, run_id)
    selection = read_model(SelectionManifest, paths.selection)
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
