"""The promotion gate: a new checkpoint replaces the promoted one only if it is better.

``models/<dag_id>/PROMOTED.json`` names the pipeline's current checkpoint, a copy kept
under ``models/<dag_id>/promoted/<run_id>.pt`` so that cleaning up old run folders never
breaks it. Every promotion is also appended to ``models/<dag_id>/promoted/history.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from hitl_plugin.locks import file_lock
from hitl_plugin.paths import Layout, safe_component
from hitl_plugin.schemas import TRAIN_RESULT_SCHEMA, check_schema, write_json_atomic

log = logging.getLogger(__name__)


def promoted(root: str | os.PathLike[str], dag_id: str) -> dict | None:
    """The promoted checkpoint record of a pipeline, or None before the first promotion."""
    path = Layout.at(root).promoted_file(dag_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    check_schema(record, TRAIN_RESULT_SCHEMA, str(path))
    return record


def decide(
    root: str | os.PathLike[str],
    dag_id: str,
    candidate_metrics: dict,
    *,
    metric: str = "map50_95",
    margin: float = 0.0,
) -> dict:
    """Promote iff nothing is promoted yet or ``candidate > current + margin``.

    :return: ``{"promote": bool, "candidate": x, "current": y | None, "reason": str}``.
    """
    if metric not in candidate_metrics or candidate_metrics[metric] is None:
        raise ValueError(f"candidate metrics have no {metric!r}: {sorted(candidate_metrics)}")
    candidate = float(candidate_metrics[metric])
    current_record = promoted(root, dag_id)
    if current_record is None:
        return {"promote": True, "candidate": candidate, "current": None,
                "reason": f"no promoted checkpoint yet ({metric} {candidate:.4f})"}
    current = float(current_record["metrics"][metric])
    if candidate > current + margin:
        return {"promote": True, "candidate": candidate, "current": current,
                "reason": f"{metric} {candidate:.4f} > {current:.4f} + margin {margin:g}"}
    return {"promote": False, "candidate": candidate, "current": current,
            "reason": f"{metric} {candidate:.4f} <= {current:.4f} + margin {margin:g}: "
                      f"keeping the checkpoint of run {current_record.get('run_id')}"}


def promote(
    root: str | os.PathLike[str],
    dag_id: str,
    checkpoint: str | os.PathLike[str],
    metrics: dict,
    run_id: str,
    lineage: dict | None = None,
) -> dict:
    """Make ``checkpoint`` the pipeline's promoted checkpoint (copied, then recorded atomically).

    :param lineage: what the checkpoint was made from (dataset version, config hash, package
        version, seed), kept in the record.
    :return: the new ``PROMOTED.json`` record.
    """
    layout = Layout.at(root)
    source = Path(checkpoint)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint to promote does not exist: {source}")
    folder = layout.promoted_dir(dag_id)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{safe_component(run_id)}.pt"
    with file_lock(layout.promote_lock(dag_id), what=f"promoting a checkpoint of {dag_id}"):
        previous = promoted(root, dag_id)
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        record = {
            "schema_version": TRAIN_RESULT_SCHEMA,
            "checkpoint": str(target),
            "source_checkpoint": str(source.absolute()),
            "run_id": run_id,
            "dag_id": dag_id,
            "model_version": f"{dag_id}/{run_id}",
            "metrics": metrics,
            "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "previous_run_id": previous.get("run_id") if previous else None,
            "lineage": lineage,
        }
        write_json_atomic(layout.promoted_file(dag_id), record)
        with open(layout.promotion_history(dag_id), "a", encoding="utf-8") as hist:
            hist.write(json.dumps(record) + "\n")
    log.info("promoted %s for %s (run %s)", target, dag_id, run_id)
    return record


def apply_gate(
    root: str | os.PathLike[str],
    dag_id: str,
    run_id: str,
    checkpoint: str | os.PathLike[str],
    metrics: dict,
    *,
    metric: str = "map50_95",
    margin: float = 0.0,
    lineage: dict | None = None,
) -> dict:
    """Decide and, when better, promote; idempotent under retries of the same run.

    :return: ``{"promoted", "checkpoint" (the one to use from now on: the promoted one),
        "model_version", "metrics" (of that checkpoint), "candidate", "current", "reason"}``.
    """
    current = promoted(root, dag_id)
    if current is not None and current.get("run_id") == run_id:
        return {"promoted": True, "checkpoint": current["checkpoint"],
                "model_version": current.get("model_version", f"{dag_id}/{run_id}"),
                "metrics": current["metrics"], "candidate": current["metrics"].get(metric),
                "current": current["metrics"].get(metric),
                "reason": "this run's checkpoint is already promoted (retry)"}
    verdict = decide(root, dag_id, metrics, metric=metric, margin=margin)
    if verdict["promote"]:
        record = promote(root, dag_id, checkpoint, metrics, run_id, lineage)
    else:
        record = current
    assert record is not None
    return {"promoted": verdict["promote"], "checkpoint": record["checkpoint"],
            "model_version": record.get("model_version", f"{dag_id}/{record.get('run_id')}"),
            "metrics": record["metrics"], "candidate": verdict["candidate"],
            "current": verdict["current"], "reason": verdict["reason"]}


def approval_body(metrics: dict) -> str:
    """Markdown for Airflow's ApprovalOperator: the candidate's metrics against the current."""
    if not metrics:
        return "No metrics were recorded for this checkpoint."
    lines = ["**Candidate checkpoint** (clean held-out set)", "",
             "| metric | value |", "|---|---|"]
    for key in ("map50_95", "map50", "n_images", "n_predictions"):
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float)
                         else f"| {key} | {value} |")
    per_class = metrics.get("per_class") or {}
    if per_class:
        lines += ["", "| class | AP50-95 |", "|---|---|"]
        lines += [f"| {name} | {float(ap):.4f} |" for name, ap in per_class.items()]
    current = metrics.get("current_map50_95")
    if current is not None:
        lines += ["", f"Currently promoted: mAP50-95 {float(current):.4f}."]
    if metrics.get("checkpoint"):
        lines += ["", f"Checkpoint: `{metrics['checkpoint']}`"]
    lines += ["", "Approve to let the gate promote it if it beats the current checkpoint; "
              "reject to keep the current one."]
    return "\n".join(lines)
