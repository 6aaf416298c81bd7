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


def read_approval(answer: object) -> dict:
    """The approval step's answer as ``{"approved", "by", "timed_out", "at"}``.

    Takes the XCom of :class:`~hitl_plugin.operators.model.CheckpointApprovalOperator` (or
    Airflow's own ``ApprovalOperator``: ``chosen_options``, ``responded_by_user``).

    :raises ValueError: for anything else, rather than guessing an answer.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("chosen_options"), list):
        raise ValueError(f"approval must be the approval step's result (with 'chosen_options'), "
                         f"got {answer!r}")
    chosen = answer["chosen_options"]
    if chosen not in (["Approve"], ["Reject"]):
        raise ValueError(f"approval chose {chosen!r}; expected ['Approve'] or ['Reject']")
    user = answer.get("responded_by_user")
    by = None
    if isinstance(user, dict):
        by = user.get("name") or user.get("id")
    return {"approved": chosen == ["Approve"], "by": by,
            "timed_out": bool(answer.get("timed_out")), "at": answer.get("responded_at")}


def who_answered(answer: dict, timeout_hours: float | None = None) -> str:
    """``alice``, or ``nobody (no answer within 24 h)`` for a timeout's default."""
    if answer.get("by"):
        return str(answer["by"])
    within = f" within {timeout_hours:g} h" if timeout_hours else ""
    return f"nobody (no answer{within})"


def apply_rejection(root: str | os.PathLike[str], dag_id: str, run_id: str, *,
                    answer: dict, on_reject: str, metric: str = "map50_95",
                    candidate_metrics: dict | None = None,
                    timeout_hours: float | None = None) -> dict:
    """The gate's result when a person rejected the candidate (or the timeout did).

    ``keep_current``: the promoted checkpoint stays and the round goes on with it; before
    any promotion there is nothing to go on with, so the round ends. ``end_round``: the
    round ends. Nothing is promoted either way; an ended round has ``ended`` set.

    :return: a gate result (see :func:`apply_gate`) plus ``ended`` (None or the reason).
    """
    who = who_answered(answer, timeout_hours)
    current = promoted(root, dag_id)
    candidate = (candidate_metrics or {}).get(metric)
    ended = None
    if on_reject == "end_round":
        ended = f"checkpoint rejected by {who}"
        reason = f"{ended}; gate.approval.on_reject is end_round: the round ends here"
    elif current is None:
        ended = f"checkpoint rejected by {who}"
        reason = (f"{ended}; no checkpoint was promoted before, so there is none to go on "
                  "with: the round ends here (approve a checkpoint to start the loop)")
    elif current.get("run_id") == run_id:
        reason = (f"checkpoint rejected by {who}, but an earlier try of this run had already "
                  "promoted it; it stays promoted")
    else:
        reason = (f"checkpoint rejected by {who}: keeping the checkpoint of run "
                  f"{current.get('run_id')}")
    if current is None:
        return {"promoted": False, "checkpoint": None, "model_version": None, "metrics": {},
                "candidate": candidate, "current": None, "reason": reason, "ended": ended}
    return {"promoted": False, "checkpoint": current["checkpoint"],
            "model_version": current.get("model_version", f"{dag_id}/{current.get('run_id')}"),
            "metrics": current["metrics"], "candidate": candidate,
            "current": current["metrics"].get(metric), "reason": reason, "ended": ended}


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def approval_body(metrics: dict, current: dict | None = None, *, metric: str = "map50_95",
                  margin: float = 0.0, on_reject: str = "keep_current",
                  on_timeout: str = "reject", timeout_hours: float | None = None) -> str:
    """Markdown for the approval: the candidate's metrics beside the promoted checkpoint's,
    and what each answer does under the config.

    :param metrics: the candidate's held-out metrics (the train step's ``metrics``).
    :param current: the promoted record (:func:`promoted`), None before any promotion.
    :param metric: ``gate.metric``; :param margin: ``gate.margin``.
    :param on_reject: ``gate.approval.on_reject``; :param on_timeout: its ``on_timeout``.
    :param timeout_hours: ``gate.approval.response_timeout_hours``.
    """
    if not metrics:
        return "No metrics were recorded for this checkpoint."
    now = (current or {}).get("metrics") or {}
    head = f"currently promoted (run {current.get('run_id')})" if current else \
        "currently promoted"
    lines = ["**Candidate checkpoint against the promoted one** (clean held-out set)", "",
             f"| metric | {head} | candidate |", "|---|---|---|"]
    for key in ("map50_95", "map50", "n_images", "n_predictions"):
        if metrics.get(key) is not None or now.get(key) is not None:
            lines.append(f"| {key} | {_cell(now.get(key)) if current else 'none yet'} | "
                         f"{_cell(metrics.get(key))} |")
    per_class = metrics.get("per_class") or {}
    current_class = now.get("per_class") or {}
    if per_class or current_class:
        lines += ["", "| class | AP50-95 promoted | AP50-95 candidate |", "|---|---|---|"]
        for name in list(per_class) + [n for n in current_class if n not in per_class]:
            have, new = current_class.get(name), per_class.get(name)
            lines.append(f"| {name} | {_cell(None if have is None else float(have))} | "
                         f"{_cell(None if new is None else float(new))} |")
    if metrics.get("checkpoint"):
        lines += ["", f"Checkpoint: `{metrics['checkpoint']}`"]

    value = metrics.get(metric)
    if current is None:
        gate = "nothing is promoted yet, so the gate promotes it"
    elif value is None or now.get(metric) is None:
        gate = f"the gate compares {metric}"
    elif float(value) > float(now[metric]) + margin:
        gate = (f"its {metric} {float(value):.4f} beats {float(now[metric]):.4f} + margin "
                f"{margin:g}, so the gate promotes it")
    else:
        gate = (f"its {metric} {float(value):.4f} does not beat {float(now[metric]):.4f} + "
                f"margin {margin:g}, so the gate keeps the current one")
    if on_reject == "end_round":
        reject = ("nothing is promoted and the rest of this round is skipped (no scoring, "
                  "labeling or merge)")
    elif current is None:
        reject = ("nothing is promoted; as no checkpoint was promoted before, there is none to "
                  "go on with, and the rest of this round is skipped")
    else:
        reject = (f"the checkpoint of run {current.get('run_id')} stays promoted and this round "
                  "goes on with it: scoring, selection, labeling and merge still happen")
    lines += ["", f"- **Approve**: {gate}.", f"- **Reject**: {reject}."]
    if timeout_hours:
        lines.append(f"- **No answer within {timeout_hours:g} h** counts as "
                     f"{'Reject' if on_timeout == 'reject' else 'Approve'}.")
    return "\n".join(lines)
