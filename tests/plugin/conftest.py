"""A storage root with two reported rounds (the second with a drift report and its plot),
one round waiting for people (its drift step ran, on too few images), and a dataset with
a lineage; helpers that read the numbers a page shows (``data-testid``)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.report import drift_section

DAG = "hitl_shapes"
OTHER = "hitl_other"
RUN1, RUN2 = "manual__2026-01-01T00:00:00+00:00", "manual__2"
WAITING = "manual__3"


def report(run_id: str, *, before: float, after: float | None, new_version: str,
           base_version: str, annotators: list[dict] | None = None, **over) -> dict:
    """A round report with every key :func:`hitl_plugin.report.write_round_report` writes."""
    rep = {
        "schema_version": 1, "dag_id": DAG, "run_id": run_id, "dataset": "shapes",
        "base_version": base_version, "new_version": new_version, "selected": 12,
        "selection": {"by_reason": {"label_error": 8, "uncertain": 3, "audit": 1},
                      "by_suspicion": {"missing": 4, "class_swap": 3}},
        "corrections": {"labeled": 11, "skipped": 1, "rejected": 2, "confirmed": 4,
                        "edited": 6, "empty": 1, "regions_dropped": 0},
        "auto_accept": {"threshold": 0.91, "source": "calibrated", "target_precision": 0.98,
                        "held_out_precision": 0.985, "held_out_boxes": 210,
                        "model_version": "m1", "images": 5, "boxes": 17,
                        "accepted_boxes_changed_by_people": 1,
                        "earlier_model_labels_corrected": 0},
        "annotators": annotators or [],
        "workforce": {"gold_tasks": 2, "gold_planted_errors": 3, "overlapped_tasks": 2,
                      "consensus_merged": 2, "held": {}, "flagged": []},
        "workers": [], "labels_confirmed": 9,
        "fixed": {"missing": 3, "spurious": 1, "class_swap": 2, "bad_box": 0},
        "pool_labeled": 3, "pool_boxes_labeled": 7, "human_boxes": 31,
        "map50_95_before": before, "map50_95_after": after, "promoted": True,
        "drift": None,
        "plot": "report.png", "report": "report.json", "finished": "2026-01-01T00:00:00+00:00",
        "text": f"Round {run_id} of {DAG}",
    }
    rep.update(over)
    return rep


PEOPLE = [{"annotator": "ana@people.local", "tasks": 9, "gold_tasks": 2, "gold_boxes": 120,
           "gold_matched": 114, "accuracy": 0.95, "accuracy_ci95": [0.9, 0.98],
           "precision": 0.97, "agreement": 0.93, "agreement_tasks": 2, "median_seconds": 8.5,
           "flagged": False, "held_answers": 0},
          {"annotator": "<cid>", "tasks": 8, "gold_tasks": 2, "gold_boxes": 110,
           "gold_matched": 67, "accuracy": 0.61, "accuracy_ci95": [0.52, 0.7],
           "precision": 0.66, "agreement": 0.7, "agreement_tasks": 2, "median_seconds": 9.0,
           "flagged": True, "held_answers": 3}]


#: What the selection of round 2 did with its drift (``selection.json``'s ``drift``).
APPLIED = {"detected": True, "report": "drift.json", "base_budget": 12, "budget": 24,
           "reserved": 6}


def _round(root: Path, dag: str, folder: str) -> Path:
    path = root / "rounds" / dag / folder
    path.mkdir(parents=True)
    return path


@pytest.fixture
def root(tmp_path, drift_report):
    return make_root(tmp_path, drift_report)


def make_root(tmp_path: Path, drift_report) -> Path:
    """Two pipelines: ``hitl_shapes`` (two reported rounds, one waiting, dataset ``shapes``
    v0001 ← v0002 ← v0003) and ``hitl_other`` (one round, dataset ``secret_set``); the
    drift reports from ``drift_report`` (the fixture of tests/conftest.py)."""
    from hitl_plugin.paths import safe_component

    store = DatasetStore(tmp_path, "shapes")
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    store.publish(coco, parent=None)
    store.publish(coco, parent="v0001", round=1, round_key=f"{DAG}|{RUN1}")
    store.publish(coco, parent="v0002", round=2, round_key=f"{DAG}|{RUN2}")
    one = _round(tmp_path, DAG, safe_component(RUN1))
    (one / "report.json").write_text(json.dumps(report(
        RUN1, before=0.41, after=0.47, new_version="v0002", base_version="v0001",
        finished="2026-01-01T10:00:00+00:00")))
    (one / "report.png").write_bytes(b"\x89PNG fake")
    (one / "submissions").mkdir()
    (one / "submissions" / "0-12.json").write_text(json.dumps(
        {"status": "done", "project_id": 7, "submitted": 12, "already_present": 0,
         "run_id": RUN1, "batch": [0, 12]}))
    two = _round(tmp_path, DAG, RUN2)
    drift = drift_report(60, 1.5, dag_id=DAG, run_id=RUN2, dataset="shapes",
                         version="v0002", model_version="m1", at="2026-01-02T08:00:00+00:00")
    assert drift["verdict"] == "drift"
    (two / "drift.json").write_text(json.dumps(drift))
    (two / "drift.png").write_bytes(b"\x89PNG drift")
    (two / "report.json").write_text(json.dumps(report(
        RUN2, before=0.5, after=None, new_version="v0003", base_version="v0002",
        annotators=PEOPLE, finished="2026-01-02T10:00:00+00:00",
        drift=drift_section(drift, {**APPLIED, "report": str(two / "drift.json")},
                            report=two / "drift.json", plot=two / "drift.png"),
        corrections={"labeled": 10, "skipped": 2, "rejected": 0, "confirmed": 5,
                     "edited": 3, "empty": 2, "regions_dropped": 1},
        fixed={"missing": 1, "spurious": 0, "class_swap": 4, "bad_box": 2})))
    (two / "report.png").write_bytes(b"\x89PNG two")
    waiting = _round(tmp_path, DAG, WAITING)
    (waiting / "drift.json").write_text(json.dumps(drift_report(10, 0.0, dag_id=DAG,
                                                                run_id=WAITING,
                                                                n_pool_tested_before=25)))
    (waiting / "submissions").mkdir()
    for start, stop, new, old in ((0, 5, 5, 0), (5, 8, 2, 1)):
        (waiting / "submissions" / f"{start}-{stop}.json").write_text(json.dumps(
            {"status": "done", "project_id": 9, "submitted": new, "already_present": old,
             "run_id": WAITING, "dag_id": DAG, "batch": [start, stop]}))
    (waiting / "wait_for_labels.wait_deadline.json").write_text(json.dumps(
        {"deadline": "2026-01-03T12:00:00+00:00", "timeout_s": 3600, "max_tries": 1}))
    other = _round(tmp_path, OTHER, "manual__1")
    (other / "report.json").write_text(json.dumps(report(
        "manual__1", before=0.2, after=0.3, new_version="v0009", base_version="v0008",
        dag_id=OTHER, dataset="secret_set")))
    (other / "report.png").write_bytes(b"\x89PNG other")
    DatasetStore(tmp_path, "secret_set").publish(coco, parent=None)
    DatasetStore(tmp_path, "orphan").publish(coco, parent=None)  # no pipeline names it
    return tmp_path


_CELL = re.compile(r'data-testid="([^"]*)" data-value="([^"]*)">([^<]*)<')


def shown(page: str) -> dict[str, tuple[object, str]]:
    """Every number on a page: ``{testid: (raw value, text shown)}``."""
    return {html.unescape(tid): (json.loads(html.unescape(raw)), html.unescape(text))
            for tid, raw, text in _CELL.findall(page)}


def testids(page: str) -> set[str]:
    return {html.unescape(t) for t in re.findall(r'data-testid="([^"]*)"', page)}


@pytest.fixture
def pg():
    """The names and helpers above, for the tests (conftest is not importable by name)."""
    return SimpleNamespace(DAG=DAG, OTHER=OTHER, RUN1=RUN1, RUN2=RUN2, WAITING=WAITING,
                           PEOPLE=PEOPLE, APPLIED=APPLIED, report=report, shown=shown,
                           testids=testids)
