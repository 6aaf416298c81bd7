"""Notifications: the config names Airflow notifiers by import path (checked with errors that
name the field), ``gate.approval`` needs its switch, and sending never fails the round."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from hitl_plugin.config import parse_config
from hitl_plugin.exceptions import ConfigError

TESTS = Path(__file__).resolve().parent
RECORDER = "hitl_recording_notifier.RecordingNotifier"
FAILING = "hitl_recording_notifier.FailingNotifier"


@pytest.fixture(autouse=True)
def notifiers_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def config(**sections):
    return parse_config({"dag_id": "d", **sections}, source="p.yaml")


def test_notifier_class_path_and_args_are_checked_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as bad_module:
        config(notifications={"notifiers": [{"class": "no_such_module.Notifier"}]})
    assert "p.yaml" in str(bad_module.value)
    assert "notifications.notifiers.0.class: Value error, cannot import " \
        "'no_such_module.Notifier'" in str(bad_module.value)
    with pytest.raises(ConfigError, match=r"notifications.notifiers.0.class: .*has no "
                                          r"'Nope'"):
        config(notifications={"notifiers": [{"class": "hitl_recording_notifier.Nope"}]})
    with pytest.raises(ConfigError, match=r"is not a notifier class"):
        config(notifications={"notifiers": [{"class": "hitl_recording_notifier.read"}]})
    with pytest.raises(ConfigError, match=r"notifications.notifiers.0: Value error, args do "
                                          r"not fit .*RecordingNotifier.*'to'"):
        config(notifications={"notifiers": [{"class": RECORDER,
                                             "args": {"path": "x", "to": "x"}}]})
    with pytest.raises(ConfigError, match=r"notifications.notifiers.0.events.0"):
        config(notifications={"notifiers": [{"class": RECORDER, "args": {"path": "x"},
                                             "events": ["sometimes"]}]})
    with pytest.raises(ConfigError, match=r"notifications.near_deadline_hours"):
        config(notifications={"near_deadline_hours": 0})
    good = config(notifications={"near_deadline_hours": 2, "notifiers": [
        {"class": RECORDER, "args": {"path": str(tmp_path / "n")}, "events": ["round_failed"]},
        {"class": FAILING}]})
    assert [n.class_path for n in good.notifications.for_event("round_failed")] == \
        [RECORDER, FAILING]
    assert [n.class_path for n in good.notifications.for_event("labeling_ready")] == [FAILING]


def test_approval_settings_and_the_switch():
    plain = config(gate={"require_approval": True})  # the configs written before still work
    approval = plain.gate.approval
    assert (approval.response_timeout_hours, approval.on_timeout, approval.on_reject) == \
        (24.0, "reject", "keep_current")
    assert approval.hitl_users() == [] and approval.notifiers is None
    full = config(gate={"require_approval": True, "approval": {
        "response_timeout_hours": 0.5, "on_reject": "end_round", "on_timeout": "approve",
        "assigned_users": ["alice", 7, {"id": "3", "name": "Bob"}], "notifiers": []}})
    assert full.gate.approval.hitl_users() == [
        {"id": "alice", "name": "alice"}, {"id": "7", "name": "7"}, {"id": "3", "name": "Bob"}]
    with pytest.raises(ConfigError, match="gate.approval is set but gate.require_approval is "
                                          "false: add `require_approval: true`"):
        config(gate={"approval": {"on_reject": "end_round"}})
    with pytest.raises(ConfigError, match=r"gate.approval.on_reject: Input should be "
                                          r"'keep_current' or 'end_round'"):
        config(gate={"require_approval": True, "approval": {"on_reject": "maybe"}})
    with pytest.raises(ConfigError, match=r"gate.approval.response_timeout_hours"):
        config(gate={"require_approval": True, "approval": {"response_timeout_hours": 0}})


def test_send_renders_templates_with_hitl_and_survives_a_failing_notifier(tmp_path):
    from airflow.sdk import DAG
    from hitl_recording_notifier import read

    from hitl_plugin import notify

    out = tmp_path / "calls.jsonl"
    cfg = config(notifications={"notifiers": [
        {"class": FAILING},
        {"class": RECORDER, "args": {"path": str(out), "subject": "{{ hitl.subject }} ({{ "
                                     "dag.dag_id }})"}},
        {"class": RECORDER, "args": {"path": str(out)}, "events": ["round_failed"]}]})
    event = notify.labeling_ready(dag_id="d", run_id="r1", project_id=4, tasks=12,
                                  deadline="2026-12-03T10:00:00+00:00",
                                  url="http://ls:8080/projects/4/data")
    context = {"dag": DAG("d", schedule=None), "run_id": "r1"}
    assert notify.send(event, context, cfg.notifications.notifiers) == 1
    (call,) = read(out)
    assert call["event"] == "labeling_ready" and call["subject"] == \
        "[hitl] d: 12 labeling task(s) ready (d)"
    assert "12 labeling task(s) of round r1 are ready in Label Studio project 4: " \
        "http://ls:8080/projects/4/data" in call["message"]
    assert call["details"]["tasks"] == 12

    # once per round (and key): a retried task does not tell people twice
    rnd = SimpleNamespace(run_id="r1", paths=SimpleNamespace(
        notified=lambda name: tmp_path / "round" / "notifications" / f"{name}.json"))
    notes = cfg.notifications.notifiers
    assert notify.send_once(rnd, event, context, notes) is True
    assert notify.send_once(rnd, event, context, notes) is False
    assert len(read(out)) == 2 and notify.already_sent(rnd, "labeling_ready")
    near = notify.deadline_near(dag_id="d", run_id="r1", project_id=4, total=12, completed=5,
                                deadline="2026-12-03T10:00:00+00:00", url=None,
                                now=datetime(2026, 12, 3, 8, 30, tzinfo=timezone.utc))
    assert near["subject"] == "[hitl] d: 7 labeling task(s) left, deadline in 1.5 h"
    assert notify.send_once(rnd, near, context, notes, key="deadline-1") is True
    assert notify.send_once(rnd, near, context, notes, key="deadline-1") is False
    assert notify.send_once(rnd, near, context, notes, key="deadline-2") is True  # cleared
    assert len(read(out)) == 4


def test_hitl_notifier_builds_round_failed_from_the_callback_context(tmp_path):
    from hitl_recording_notifier import read

    from hitl_plugin.notify import HitlNotifier

    out = tmp_path / "calls.jsonl"
    cfg = config(notifications={"notifiers": [{"class": FAILING},
                                              {"class": RECORDER, "args": {"path": str(out)}}]})
    callback = HitlNotifier(event="round_failed", notifiers=cfg.notifications.notifiers)
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="collect")
    callback({"ti": ti, "reason": "task_failure", "dag": None})
    (call,) = read(out)
    assert call["subject"] == "[hitl] d: round manual__1 failed at task collect"
    assert "(task_failure)" in call["message"]
    with pytest.raises(ValueError, match="not 'labeling_ready'"):
        HitlNotifier(event="labeling_ready", notifiers=[])
