"""The gate with a person's answer: what Approve, Reject and no answer do, and the
approval's text that says so, with the promoted checkpoint's metrics beside the candidate's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hitl_plugin.model.gate import (
    apply_rejection,
    approval_body,
    promote,
    read_approval,
    who_answered,
)

CURRENT = {"map50_95": 0.55, "map50": 0.8, "n_images": 40, "per_class": {"circle": 0.6,
                                                                           "square": 0.5}}
CANDIDATE = {"map50_95": 0.61234, "map50": 0.9, "n_images": 40,
             "per_class": {"circle": 0.7, "square": 0.52}}


def _promote_r1(root: Path) -> dict:
    ckpt = root / "runs" / "r1.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"r1")
    return promote(root, "d", ckpt, CURRENT, "r1")


def test_read_approval_takes_our_answer_and_airflows():
    ours = {"chosen_options": ["Reject"], "approved": False, "timed_out": True,
            "responded_by_user": None, "responded_at": "2026-12-01T10:00:00+00:00"}
    assert read_approval(ours) == {"approved": False, "by": None, "timed_out": True,
                                   "at": "2026-12-01T10:00:00+00:00"}
    airflows = {"chosen_options": ["Approve"], "params_input": {},
                "responded_by_user": {"id": "7", "name": "alice"}, "responded_at": "t"}
    assert read_approval(airflows)["approved"] is True
    assert read_approval(airflows)["by"] == "alice"
    assert who_answered(read_approval(ours), 24) == "nobody (no answer within 24 h)"
    for bad in (None, "Approve", {"chosen_options": ["Maybe"]}, {"chosen_options": []}):
        with pytest.raises(ValueError):
            read_approval(bad)


def test_rejection_keeps_the_promoted_checkpoint_or_ends_the_round(tmp_path):
    no = {"approved": False, "by": "alice", "timed_out": False}
    # before any promotion there is nothing to keep: the round ends, whatever on_reject says
    first = apply_rejection(tmp_path, "d", "r0", answer=no, on_reject="keep_current",
                            candidate_metrics=CANDIDATE)
    assert first["ended"] == "checkpoint rejected by alice" and first["checkpoint"] is None
    assert "no checkpoint was promoted before" in first["reason"]

    record = _promote_r1(tmp_path)
    kept = apply_rejection(tmp_path, "d", "r2", answer=no, on_reject="keep_current",
                           candidate_metrics=CANDIDATE)
    assert kept["ended"] is None and kept["promoted"] is False
    assert kept["checkpoint"] == record["checkpoint"] and kept["metrics"] == CURRENT
    assert kept["model_version"] == "d/r1" and kept["current"] == 0.55
    assert kept["candidate"] == 0.61234
    assert kept["reason"] == "checkpoint rejected by alice: keeping the checkpoint of run r1"

    ended = apply_rejection(tmp_path, "d", "r2", answer={"approved": False, "by": None},
                            on_reject="end_round", timeout_hours=24)
    assert ended["ended"] == "checkpoint rejected by nobody (no answer within 24 h)"
    assert ended["checkpoint"] == record["checkpoint"]  # still the promoted one, unchanged
    assert json.loads((tmp_path / "models" / "d" / "PROMOTED.json").read_text())[
        "run_id"] == "r1"


def test_body_shows_both_checkpoints_and_says_what_each_answer_does(tmp_path):
    record = _promote_r1(tmp_path)
    body = approval_body(CANDIDATE, record, metric="map50_95", margin=0.0,
                         on_reject="keep_current", on_timeout="reject", timeout_hours=24)
    assert "| metric | currently promoted (run r1) | candidate |" in body
    assert "| map50_95 | 0.5500 | 0.6123 |" in body and "| map50 | 0.8000 | 0.9000 |" in body
    assert "| circle | 0.6000 | 0.7000 |" in body
    assert "- **Approve**: its map50_95 0.6123 beats 0.5500 + margin 0, so the gate " \
        "promotes it." in body
    assert "- **Reject**: the checkpoint of run r1 stays promoted and this round goes on " \
        "with it: scoring, selection, labeling and merge still happen." in body
    assert "- **No answer within 24 h** counts as Reject." in body

    worse = approval_body(CANDIDATE, record, margin=0.1, on_reject="end_round",
                          on_timeout="approve", timeout_hours=2)
    assert "does not beat 0.5500 + margin 0.1, so the gate keeps the current one" in worse
    assert "- **Reject**: nothing is promoted and the rest of this round is skipped" in worse
    assert "counts as Approve" in worse

    first = approval_body(CANDIDATE, None)
    assert "| map50_95 | none yet | 0.6123 |" in first
    assert "nothing is promoted yet, so the gate promotes it" in first
    assert "there is none to go on with, and the rest of this round is skipped" in first
