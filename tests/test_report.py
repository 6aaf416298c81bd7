"""The round report's drift section, text and plot (``write_round_report``), on a round
made by hand: a selection (with or without the drift step's ``drift``), no corrections, a
merge report, a training without an evaluation file. ``drift.json`` comes from
:func:`hitl_plugin.model.drift.detect` on small random arrays (the ``drift_report``
fixture); no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hitl_plugin.config import parse_config
from hitl_plugin.paths import Layout
from hitl_plugin.report import drift_section, read_drift, read_reports, write_round_report

DAG, DATASET = "hitl_report", "shapes"
SIGNALS = ("confidence", "box_count", "class_mix", "embedding")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def make_drift(drift_report):
    """``make_drift(shift, n=80)``: the round's ``drift.json`` (tests/conftest.py)."""
    return lambda shift, n=80: drift_report(n, shift, dag_id=DAG, dataset=DATASET)


def _round(tmp_path: Path, run_id: str, *, drift: dict | None,
           applied: dict | None) -> dict:
    """Write the round's files and its report; the report."""
    layout = Layout.at(tmp_path)
    paths = layout.round(DAG, run_id)
    paths.dir.mkdir(parents=True)
    items = [{"image_id": i, "file_name": f"{i}.png", "width": 8, "height": 8,
              "split": "pool", "reason": reason, "score": 0.5}
             for i, reason in enumerate(["uncertainty"] * 3 + ["drift"] * 2)]
    selection = {"schema_version": 1, "dag_id": DAG, "run_id": run_id, "dataset": DATASET,
                 "version": "v0001", "model_version": "m1",
                 "categories": [{"id": 1, "name": "a"}], "strategy": "uncertainty",
                 "budget": 5, "seed": 0, "items": items, "drift": applied}
    paths.selection.write_text(json.dumps(selection))
    paths.corrections.write_text(json.dumps(
        {"schema_version": 1, "dag_id": DAG, "run_id": run_id, "dataset": DATASET,
         "version": "v0001", "items": []}))
    paths.merge_report.write_text(json.dumps(
        {"counts": {"pool_labeled": 0, "pool_boxes_labeled": 0}}))
    if drift is not None:
        paths.drift.write_text(json.dumps({**drift, "run_id": run_id}))
    config = parse_config({"dag_id": DAG, "storage": {"root": str(tmp_path)},
                           "dataset": {"name": DATASET}})
    train = {"metrics": {"map50_95": 0.4}, "model_dir": str(tmp_path / "no_model")}
    merge = {"version": "v0002", "report": str(paths.merge_report)}
    return write_round_report(layout, config, dag_id=DAG, run_id=run_id,
                              base_version="v0001", train=train,
                              gate={"promoted": True}, merge=merge)


@pytest.mark.parametrize("shift, verdict", [(1.5, "drift"), (0.0, "no_drift")])
def test_the_report_gathers_the_drift_verdict_signals_and_budget(tmp_path, make_drift, shift,
                                                               verdict):
    drift = make_drift(shift)
    assert drift["verdict"] == verdict
    detected = verdict == "drift"
    applied = {"detected": detected, "report": str(tmp_path / "elsewhere.json"),
               "base_budget": 40, "budget": 80 if detected else 40,
               "reserved": 38 if detected else 0}
    rep = _round(tmp_path, "r1", drift=drift, applied=applied)
    paths = Layout.at(tmp_path).round(DAG, "r1")
    section = rep["drift"]
    assert section["verdict"] == verdict and section["detected"] is detected
    assert section["reason"] == drift["reason"]
    assert (section["n_pool"], section["n_reference"]) == (80, 80)
    assert section["alpha"] == 0.05 and section["threshold"] == 0.05 / 4
    assert set(section["signals"]) == set(SIGNALS)
    for name in SIGNALS:
        assert section["signals"][name] == {
            k: drift["signals"][name][k] for k in ("test", "statistic", "p_value")}
    assert (section["base_budget"], section["budget"], section["reserved"]) == (
        applied["base_budget"], applied["budget"], applied["reserved"])
    assert section["report"] == str(paths.drift)  # the round's own drift.json
    # the plot beside report.png, named in the section and in the text
    assert section["plot"] == str(paths.drift_plot)
    assert paths.drift_plot.read_bytes().startswith(PNG)
    assert paths.plot.read_bytes().startswith(PNG)
    text = rep["text"]
    words = "drift detected" if detected else "no drift"
    assert f"  drift: {words} ({drift['reason']})" in text
    assert ("budget 40 -> 80, 38 images reserved for the most out-of-distribution" if detected
            else "budget 40 unchanged") in text
    for name in SIGNALS:
        assert f"{name} ({drift['signals'][name]['test']}) " \
               f"{drift['signals'][name]['p_value']:.2g}" in text
    assert "threshold 0.0125 (alpha 0.05 over 4 signals); 80 pool against 80 held-out " \
           "images\n" in text + "\n"  # no pool image was tested by an earlier round
    assert section["n_pool_tested_before"] == 0
    assert f"drift plot: {paths.drift_plot}" in text
    # written as returned, and read back by the view
    (stored,) = read_reports(Layout.at(tmp_path), DAG)
    assert stored["drift"] == section and stored["selection"]["by_reason"]["drift"] == 2
    # a later round that left out what an earlier one tested says so
    later = _round(tmp_path, "r2", drift={**drift, "n_pool_tested_before": 7}, applied=applied)
    assert later["drift"]["n_pool_tested_before"] == 7
    assert "80 pool against 80 held-out images (7 left over from earlier rounds, tested " \
           "then)" in later["text"]


def test_too_few_images_has_a_verdict_and_no_plot(tmp_path, make_drift):
    drift = make_drift(0.0, n=10)
    assert drift["verdict"] == "too_few_images" and not drift["plots"]
    rep = _round(tmp_path, "r1", drift=drift, applied={
        "detected": False, "report": "drift.json", "base_budget": 5, "budget": 5,
        "reserved": 0})
    assert rep["drift"]["verdict"] == "too_few_images"
    assert rep["drift"]["signals"] == {} and rep["drift"]["threshold"] is None
    assert rep["drift"]["plot"] is None
    assert not Layout.at(tmp_path).round(DAG, "r1").drift_plot.exists()
    assert "  drift: not tested: too few images (10 pool and 10 held-out" in rep["text"]
    assert "p-values" not in rep["text"]


def test_a_round_without_a_drift_step_reports_as_before(tmp_path):
    rep = _round(tmp_path, "r1", drift=None, applied=None)
    assert rep["drift"] is None
    lines = rep["text"].splitlines()
    assert not [ln for ln in lines if ln.startswith(("  drift:", "    p-values:",
                                                     "    drift plot:"))]
    assert not Layout.at(tmp_path).round(DAG, "r1").drift_plot.exists()


def test_an_unreadable_drift_report_is_said_not_raised(tmp_path):
    layout = Layout.at(tmp_path)
    paths = layout.round(DAG, "r1")
    paths.dir.mkdir(parents=True)
    paths.drift.write_text("{not json")
    applied = {"detected": True, "report": str(paths.drift), "base_budget": 4, "budget": 8,
               "reserved": 2}
    section = drift_section(read_drift(paths, applied), applied)
    assert section["verdict"] == "unreadable" and section["detected"] is True
    assert section["reason"].startswith("drift.json unreadable")
    assert section["budget"] == 8
