"""What the HITL view shows, as plain data read from the storage root (no Airflow here).

:func:`pipeline_view` gathers one pipeline: its rounds (the round reports, and the rounds
still running with their stage), the numbers each round table cell shows, the dataset the
pipeline trains on and that dataset's lineage, and each round's drift p-values.
:func:`run_view` gathers one round, with its drift section (:func:`round_drift`).
:func:`waiting_plan` is what a live progress count of a round that waits for people needs
(its Label Studio project, the tasks the submit step recorded, the wait's deadline), and
:func:`progress` counts it through a Label Studio client. :mod:`hitl_plugin.plugin` checks
who may read what; :mod:`hitl_plugin.dashboard_html` draws it.

Everything is read fail-soft: a file that is missing or unreadable leaves its part of the
view empty (with a reason), never an error page.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hitl_plugin.boxes import KINDS
from hitl_plugin.paths import Layout, RoundPaths, safe_component
from hitl_plugin.report import drift_section, read_drift, read_reports

log = logging.getLogger(__name__)

#: A round's stage, from the files its steps have written so far.
STAGES = ("running", "submitting", "labeling", "collected", "merged", "reported", "ended")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def submissions(paths: RoundPaths) -> list[dict]:
    """The round's per-batch submission records (``submissions/<start>-<stop>.json``)."""
    if not paths.submissions.is_dir():
        return []
    rows = [_read_json(p) for p in sorted(paths.submissions.glob("*.json"))]
    return [r for r in rows if isinstance(r, dict)]


def wait_deadline(paths: RoundPaths) -> str | None:
    """The absolute deadline of the round's wait (``<task_id>.wait_deadline.json``, written
    by :func:`hitl_plugin.steps.plan_wait` at the wait's first try), or None before it."""
    found = sorted(paths.dir.glob("*.wait_deadline.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(found):
        saved = _read_json(path)
        if isinstance(saved, dict) and isinstance(saved.get("deadline"), str):
            return saved["deadline"]
    return None


def stage(paths: RoundPaths) -> str:
    """How far the round got, from the files its steps wrote (see :data:`STAGES`; ``ended``:
    the round stopped at the gate, its checkpoint rejected)."""
    if paths.report.is_file():
        return "reported"
    ended = getattr(paths, "ended", None)  # the gate's record of a rejected checkpoint
    if ended is not None and ended.is_file():
        return "ended"
    if paths.merge_report.is_file():
        return "merged"
    if paths.corrections.is_file():
        return "collected"
    records = submissions(paths)
    if records and all(r.get("status") == "done" for r in records):
        return "labeling"
    if records:
        return "submitting"
    return "running"


def project_id(records: list[dict]) -> int | None:
    """The round's Label Studio project (every batch of a round goes to one project)."""
    ids = {r.get("project_id") for r in records if isinstance(r.get("project_id"), int)}
    return ids.pop() if len(ids) == 1 else None


def waiting_plan(layout: Layout, dag_id: str, run_id: str) -> dict | None:
    """What a live count of a round that waits for people needs, or None when the round
    is not waiting (not submitted yet, or already collected).

    :return: ``{"project_id", "expected", "deadline", "annotators", "dag_id", "run_id"}``;
        ``run_id`` is the round's own (from its records), ``annotators`` the most people
        a task of the round needs (the selection's), as the wait counts.
    """
    paths = layout.round(dag_id, run_id)
    if stage(paths) != "labeling":
        return None
    records = submissions(paths)
    pid = project_id(records)
    if pid is None:
        return None
    selection = _read_json(paths.selection)
    items = selection.get("items", []) if isinstance(selection, dict) else []
    annotators = max([int(i.get("annotators", 1)) for i in items if isinstance(i, dict)] or [1])
    return {
        "project_id": pid,
        "expected": sum(int(r.get("submitted", 0)) + int(r.get("already_present", 0))
                        for r in records),
        "deadline": wait_deadline(paths),
        "annotators": annotators,
        "dag_id": dag_id,
        "run_id": str(records[0].get("run_id") or run_id),
    }


def progress(client: Any, plan: dict) -> dict:
    """Count a waiting round's tasks in Label Studio (the wait's own count,
    :func:`hitl_plugin.labeling.client.round_counts_sync`).

    :return: ``{"done", "total", "annotated", "skipped", "fraction", "deadline",
        "project_id"}``; ``total`` is at least what the submit step recorded.
    """
    from hitl_plugin.labeling.client import round_counts_sync

    counts = round_counts_sync(client, plan["project_id"], plan["dag_id"], plan["run_id"],
                               plan["annotators"])
    total = max(int(counts.get("total", 0)), int(plan.get("expected") or 0))
    done = int(counts.get("completed", 0))
    return {"project_id": plan["project_id"], "done": done, "total": total,
            "annotated": int(counts.get("annotated", 0)),
            "skipped": int(counts.get("skipped", 0)),
            "fraction": round(done / total, 4) if total else 1.0,
            "deadline": plan.get("deadline")}


def human_boxes(rep: dict, paths: RoundPaths) -> int | None:
    """Boxes people drew or kept in the round's merged images (the merge's
    ``human_boxes_written``); from the round's merge report for reports without the key."""
    if isinstance(rep.get("human_boxes"), int):
        return rep["human_boxes"]
    merge = _read_json(paths.merge_report)
    counts = merge.get("counts") if isinstance(merge, dict) else None
    value = counts.get("human_boxes_written") if isinstance(counts, dict) else None
    return value if isinstance(value, int) else None


def round_drift(paths: RoundPaths, rep: dict | None = None) -> dict | None:
    """The round's drift section (:func:`hitl_plugin.report.drift_section`): its report's,
    else, for a round not reported yet (or reported before the section existed), from its
    ``drift.json`` and the selection's ``drift``; None when no drift step ran."""
    if rep is not None and "drift" in rep:
        return rep["drift"] if isinstance(rep["drift"], dict) else None
    if not paths.drift.is_file():
        return None
    selection = _read_json(paths.selection)
    applied = selection.get("drift") if isinstance(selection, dict) else None
    applied = applied if isinstance(applied, dict) else None
    return drift_section(read_drift(paths, applied), applied, report=paths.drift)


def round_row(layout: Layout, dag_id: str, rep: dict) -> dict:
    """The numbers of one reported round, as its table row and the per-run view show them
    (each straight from ``report.json``; see :func:`hitl_plugin.report.write_round_report`)."""
    run_id = str(rep.get("run_id", ""))
    paths = layout.round(dag_id, run_id)
    if "unreadable" in rep:
        return {"run_id": run_id, "stage": "reported", "unreadable": rep["unreadable"]}
    cor = rep.get("corrections") or {}
    fixed = rep.get("fixed") if isinstance(rep.get("fixed"), dict) else {}
    aa = rep.get("auto_accept") if isinstance(rep.get("auto_accept"), dict) else None
    records = submissions(paths)
    return {
        "run_id": run_id,
        "stage": "reported",
        "finished": rep.get("finished", ""),
        "dataset": rep.get("dataset"),
        "base_version": rep.get("base_version"),
        "new_version": rep.get("new_version"),
        "selected": rep.get("selected"),
        "labeled": cor.get("labeled"),
        "confirmed": cor.get("confirmed"),
        "edited": cor.get("edited"),
        "empty": cor.get("empty"),
        "rejected": cor.get("rejected"),
        "skipped": cor.get("skipped"),
        "fixed": {kind: int(fixed.get(kind, 0)) for kind in KINDS},
        "fixed_total": sum(int(fixed.get(kind, 0)) for kind in KINDS),
        "labels_confirmed": rep.get("labels_confirmed"),
        "pool_labeled": rep.get("pool_labeled"),
        "pool_boxes_labeled": rep.get("pool_boxes_labeled"),
        "human_boxes": human_boxes(rep, paths),
        "auto_accepted_boxes": aa.get("boxes") if aa else None,
        "auto_accepted_images": aa.get("images") if aa else None,
        "auto_accept_threshold": aa.get("threshold") if aa else None,
        "map50_95_before": rep.get("map50_95_before"),
        "map50_95_after": rep.get("map50_95_after"),
        "promoted": rep.get("promoted"),
        "by_reason": (rep.get("selection") or {}).get("by_reason", {}),
        "by_suspicion": (rep.get("selection") or {}).get("by_suspicion", {}),
        "annotators": [a for a in rep.get("annotators") or [] if isinstance(a, dict)],
        "workforce": rep.get("workforce") if isinstance(rep.get("workforce"), dict) else None,
        "project_id": project_id(records),
        "has_plot": paths.plot.is_file(),
        "drift": round_drift(paths, rep),
        "has_drift_plot": paths.drift_plot.is_file(),
        "text": rep.get("text", ""),
    }


def open_row(layout: Layout, dag_id: str, paths: RoundPaths) -> dict:
    """A round without a report yet: its stage and, once submitted, its project."""
    records = submissions(paths)
    run_id = next((str(r["run_id"]) for r in records if r.get("run_id")), paths.dir.name)
    return {"run_id": run_id, "stage": stage(paths), "project_id": project_id(records),
            "deadline": wait_deadline(paths), "finished": "", "drift": round_drift(paths),
            "has_drift_plot": paths.drift_plot.is_file()}


def rounds(layout: Layout, dag_id: str) -> list[dict]:
    """Every round of a pipeline: the reported ones oldest first, then those still open."""
    rows = [round_row(layout, dag_id, rep) for rep in read_reports(layout, dag_id)]
    rows += [open_row(layout, dag_id, paths) for paths in layout.rounds(dag_id)
             if not paths.report.is_file()]
    return rows


def datasets_by_pipeline(layout: Layout) -> dict[str, set[str]]:
    """Which datasets each pipeline uses: named by its round reports, and by the dataset
    versions its rounds merged (a manifest's ``round_key`` is ``<dag_id>|<run_id>``)."""
    found: dict[str, set[str]] = {}
    folder = layout.root / "datasets"
    for manifest in sorted(folder.glob("*/v*/manifest.json")) if folder.is_dir() else []:
        data = _read_json(manifest)
        key = data.get("round_key") if isinstance(data, dict) else None
        if isinstance(key, str) and "|" in key:
            found.setdefault(key.partition("|")[0], set()).add(str(data.get("dataset")
                                                                  or manifest.parent.parent.name))
    for dag_id in layout.pipelines():
        for rep in read_reports(layout, dag_id):
            if isinstance(rep.get("dataset"), str):
                found.setdefault(dag_id, set()).add(rep["dataset"])
    return found


def pipeline_dataset(layout: Layout, dag_id: str, reports: list[dict] | None = None
                     ) -> str | None:
    """The dataset a pipeline trains on: its latest report's, else its latest merged
    version's, else its latest round's selection."""
    for rep in reversed(reports if reports is not None else read_reports(layout, dag_id)):
        if isinstance(rep.get("dataset"), str):
            return rep["dataset"]
    names = datasets_by_pipeline(layout).get(dag_id)
    if names and len(names) == 1:
        return next(iter(names))
    for paths in reversed(layout.rounds(dag_id)):
        selection = _read_json(paths.selection)
        if isinstance(selection, dict) and isinstance(selection.get("dataset"), str):
            return selection["dataset"]
    return None


def lineage(root: Path, name: str) -> dict:
    """A dataset's versions and the parent chain of its latest version.

    :return: ``{"name", "latest", "chain": [latest, its parent, ...], "versions": [{version,
        parent, round, round_key, dag_id, run_id, created, note, images, annotations}]}``
        (newest first), or ``{"name", "error"}`` when the dataset cannot be read.
    """
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.exceptions import HitlError

    store = DatasetStore(root, name)
    try:
        latest = store.latest()
        manifests = {v: store.manifest(v) for v in store.versions()}
    except (HitlError, OSError, ValueError) as exc:
        return {"name": name, "error": str(exc).splitlines()[0][:300]}
    if not manifests:
        return {"name": name, "error": f"dataset {name!r} has no version yet"}
    chain, seen = [], set()
    current = latest
    while current and current in manifests and current not in seen:
        seen.add(current)
        chain.append(current)
        current = manifests[current].get("parent")
    versions = []
    for version, man in sorted(manifests.items(), key=lambda kv: kv[0], reverse=True):
        key = man.get("round_key")
        dag, sep, run = key.partition("|") if isinstance(key, str) else ("", "", "")
        counts = man.get("counts") if isinstance(man.get("counts"), dict) else {}
        versions.append({"version": version, "parent": man.get("parent"),
                         "round": man.get("round"), "round_key": key,
                         "dag_id": dag if sep else None, "run_id": run if sep else None,
                         "created": man.get("created", ""), "note": man.get("note", ""),
                         "images": counts.get("images"),
                         "annotations": counts.get("annotations"),
                         "in_chain": version in seen})
    return {"name": name, "latest": latest, "chain": chain, "versions": versions}


def drift_series(rows: list[dict]) -> list[dict]:
    """The drift chart's points: per round (the reported ones, then those still open that
    have a drift verdict), ``{"run_id", "round", "verdict", "threshold", <signal>: p-value}``
    (a signal not tested, and every signal of a round without a drift step, left out)."""
    shown = [r for r in rows if "unreadable" not in r
             and (r["stage"] == "reported" or r.get("drift"))]
    points = []
    for i, row in enumerate(shown):
        drift = row.get("drift") or {}
        signals = drift.get("signals") if isinstance(drift.get("signals"), dict) else {}
        points.append({"run_id": row["run_id"], "round": i + 1,
                       "verdict": drift.get("verdict"), "threshold": drift.get("threshold"),
                       **{name: sig.get("p_value") for name, sig in signals.items()
                          if isinstance(sig, dict)
                          and isinstance(sig.get("p_value"), (int, float))}})
    return points


def pipeline_view(layout: Layout, dag_id: str) -> dict:
    """Everything the pipeline dashboard shows.

    :return: ``{"dag_id", "rounds", "series", "drift", "dataset", "people"}``: ``series``
        the mAP50-95 points of the reported rounds in order, ``drift`` the drift p-values
        per round (:func:`drift_series`), ``people`` the per-person table of the latest
        round that measured people (``{"run_id", "annotators"}`` or None).
    """
    reports = read_reports(layout, dag_id)
    rows = rounds(layout, dag_id)
    reported = [r for r in rows if r["stage"] == "reported" and "unreadable" not in r]
    series = [{"run_id": r["run_id"], "round": i + 1, "before": r["map50_95_before"],
               "after": r["map50_95_after"]} for i, r in enumerate(reported)]
    people = next(({"run_id": r["run_id"], "annotators": r["annotators"]}
                   for r in reversed(reported) if r["annotators"]), None)
    name = pipeline_dataset(layout, dag_id, reports)
    return {"dag_id": dag_id, "rounds": rows, "series": series, "drift": drift_series(rows),
            "people": people, "dataset": lineage(layout.root, name) if name else None}


def run_view(layout: Layout, dag_id: str, run_id: str) -> dict:
    """One round: its row (reported or open), and its dataset lineage when reported."""
    paths = layout.round(dag_id, run_id)
    row = None
    if paths.report.is_file():
        rep = next((r for r in read_reports(layout, dag_id)
                    if safe_component(str(r.get("run_id", ""))) == paths.dir.name), None)
        if rep is not None:
            row = round_row(layout, dag_id, rep)
    if row is None:
        row = open_row(layout, dag_id, paths) if paths.dir.is_dir() else {
            "run_id": run_id, "stage": "none", "project_id": None, "deadline": None,
            "finished": "", "drift": None, "has_drift_plot": False}
        row["run_id"] = run_id
    return {"dag_id": dag_id, "round": row}
