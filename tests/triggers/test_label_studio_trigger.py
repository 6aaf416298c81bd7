"""LabelsReadyTrigger: exact serialization, the completion policy, and run() against a stub
(faults: service down, 401) with a tiny poke interval."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from hitl_plugin.triggers.label_studio import LabelsReadyTrigger, decide, to_deadline

DEADLINE = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_serialize_exact_and_rebuild():
    trigger = LabelsReadyTrigger(label_studio_conn_id="ls", project_id="7", dag_id="d",
                                 run_id="manual__x", deadline=DEADLINE, expected=12,
                                 completion="fraction", min_fraction=0.75, on_timeout="continue",
                                 poke_interval=5, some_old_argument="ignored")
    classpath, kwargs = trigger.serialize()
    assert classpath == "hitl_plugin.triggers.label_studio.LabelsReadyTrigger"
    assert kwargs == {
        "label_studio_conn_id": "ls", "project_id": 7, "dag_id": "d", "run_id": "manual__x",
        "deadline": "2031-05-06T07:08:09+00:00", "expected": 12, "completion": "fraction",
        "min_fraction": 0.75, "on_timeout": "continue", "poke_interval": 5.0,
        "max_backoff": 300.0, "annotators": 1, "warn_at": None,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON only
    again = LabelsReadyTrigger(**json.loads(json.dumps(kwargs)))
    assert again.serialize() == (classpath, kwargs) and again.deadline == DEADLINE
    # the warning time is absolute too: a restarted triggerer warns at the same moment
    warned = LabelsReadyTrigger(**{**kwargs, "warn_at": "2031-05-06T05:08:09+00:00"})
    assert warned.serialize()[1]["warn_at"] == "2031-05-06T05:08:09+00:00"
    assert LabelsReadyTrigger(**warned.serialize()[1]).warn_at == DEADLINE - timedelta(hours=2)


def test_deadline_forms():
    assert to_deadline("2031-05-06T07:08:09") == DEADLINE  # naive text is UTC
    assert to_deadline(DEADLINE.timestamp()) == DEADLINE
    assert to_deadline(DEADLINE.astimezone(timezone(timedelta(hours=2)))) == DEADLINE


BEFORE, AFTER = DEADLINE - timedelta(seconds=1), DEADLINE + timedelta(seconds=1)


@pytest.mark.parametrize("counts, expected, completion, min_fraction, on_timeout, now, status", [
    ({"total": 10, "completed": 10}, 10, "all", 1.0, "fail", BEFORE, "success"),
    ({"total": 10, "completed": 9}, 10, "all", 1.0, "fail", BEFORE, None),
    ({"total": 10, "completed": 9}, 10, "fraction", 0.8, "fail", BEFORE, None),  # waits on
    ({"total": 10, "completed": 9}, 10, "fraction", 0.8, "fail", AFTER, "partial"),
    ({"total": 10, "completed": 7}, 10, "fraction", 0.8, "fail", AFTER, "error"),
    ({"total": 10, "completed": 7}, 10, "fraction", 0.8, "continue", AFTER, "partial"),
    ({"total": 10, "completed": 9}, 10, "all", 1.0, "fail", AFTER, "error"),
    ({"total": 10, "completed": 9}, 10, "all", 1.0, "continue", AFTER, "partial"),
    # tasks that vanished from the service still count as not done
    ({"total": 8, "completed": 8}, 10, "all", 1.0, "fail", BEFORE, None),
    ({"total": 0, "completed": 0}, 0, "all", 1.0, "fail", BEFORE, "success"),
])
def test_completion_policy(counts, expected, completion, min_fraction, on_timeout, now, status):
    event = decide(counts, expected=expected, completion=completion, min_fraction=min_fraction,
                   on_timeout=on_timeout, now=now, deadline=DEADLINE)
    assert (event["status"] if event else None) == status
    if status == "error":
        assert event["error_type"] == "timeout" and "required" in event["error"]


def _trigger(url_conn: str, *, deadline: datetime, **kw) -> LabelsReadyTrigger:
    return LabelsReadyTrigger(label_studio_conn_id=url_conn, project_id=1, dag_id="d",
                              run_id="r", deadline=deadline, **{"poke_interval": 0.05, **kw})


async def _first_event(trigger: LabelsReadyTrigger, timeout: float = 20.0):
    async def first():
        async for event in trigger.run():
            return event.payload

    return await asyncio.wait_for(first(), timeout)


@pytest.fixture
def conn(stub_ls, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LS_STUB", json.dumps(
        {"conn_type": "label_studio", "host": stub_ls.url, "password": stub_ls.token}))
    return "ls_stub"


def test_run_polls_until_all_done(stub_ls, conn):
    stub_ls.add_tasks("d", "r", [1, 2, 3], annotated={1})

    async def scenario():
        task = asyncio.ensure_future(_first_event(_trigger(
            conn, deadline=datetime.now(timezone.utc) + timedelta(minutes=5), expected=3)))
        await asyncio.sleep(0.4)
        assert not task.done()
        stub_ls.annotate(2)
        stub_ls.annotate(3, skipped=True)
        return await task

    event = asyncio.run(scenario())
    assert event["status"] == "success" and event["total"] == 3 and event["completed"] == 3
    assert event["annotated"] == 2 and event["skipped"] == 1
    assert stub_ls.count("GET", "/api/tasks/") >= 6  # several polls of three counts


def test_deadline_with_fraction_policy(stub_ls, conn):
    stub_ls.add_tasks("d", "r", range(1, 11), annotated=set(range(1, 8)))
    soon = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    fail = asyncio.run(_first_event(_trigger(conn, deadline=soon, completion="fraction",
                                              min_fraction=0.8, on_timeout="fail")))
    assert fail["status"] == "error" and fail["error_type"] == "timeout"
    go_on = asyncio.run(_first_event(_trigger(conn, deadline=soon, completion="fraction",
                                               min_fraction=0.8, on_timeout="continue")))
    assert go_on["status"] == "partial" and go_on["fraction"] == 0.7
    enough = asyncio.run(_first_event(_trigger(conn, deadline=soon, completion="fraction",
                                               min_fraction=0.7, on_timeout="fail")))
    assert enough["status"] == "partial" and enough["completed"] == 7


def test_service_down_until_the_deadline_is_a_typed_error_and_it_sleeps(stub_ls, conn):
    stub_ls.fault("GET", "/api/tasks/", status=503, times=10_000)
    began = time.monotonic()
    event = asyncio.run(_first_event(_trigger(
        conn, deadline=datetime.now(timezone.utc) + timedelta(seconds=1.5), max_backoff=0.2)))
    elapsed = time.monotonic() - began
    assert event["status"] == "error" and event["error_type"] == "service_unavailable"
    assert "unreachable until the deadline" in event["error"] and "503" in event["error"]
    assert stub_ls.token not in event["error"]
    assert 1.4 < elapsed < 6
    # it slept between polls (client retries=1: two requests per poll), never spun
    assert stub_ls.count("GET", "/api/tasks/") < 40


def test_bad_token_ends_at_once(stub_ls, conn, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LS_BAD", json.dumps(
        {"conn_type": "label_studio", "host": stub_ls.url, "password": "not-the-token"}))
    event = asyncio.run(_first_event(_trigger(
        "ls_bad", deadline=datetime.now(timezone.utc) + timedelta(hours=1))))
    assert event["status"] == "error" and event["error_type"] == "auth"
    assert "not-the-token" not in json.dumps(event)


def test_a_refused_request_ends_at_once(stub_ls, conn):
    stub_ls.fault("GET", "/api/tasks/", status=400, times=100)
    event = asyncio.run(_first_event(_trigger(
        conn, deadline=datetime.now(timezone.utc) + timedelta(hours=1))))
    assert event["status"] == "error" and event["error_type"] == "config"
    assert "HTTP 400" in event["error"]


def test_missing_connection_is_a_config_error():
    event = asyncio.run(_first_event(_trigger(
        "no_such_conn_anywhere", deadline=datetime.now(timezone.utc) + timedelta(hours=1))))
    assert event["status"] == "error" and event["error_type"] == "config"


def test_trigger_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, json; import hitl_plugin.triggers.label_studio, "
            "hitl_plugin.sensors.label_studio, hitl_plugin.operators.labeling; "
            "print(json.dumps([m for m in ('torch', 'ultralytics', 'pycocotools', 'cv2', "
            "'matplotlib', 'hitl_plugin.labeling.client') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_maintenance_page_and_a_null_total_are_waited_out(stub_ls, conn):
    """Issue 13, defect 4: one 200 answer that is not JSON used to end the wait as a
    configuration error, and ``"total": null`` raised TypeError inside the trigger."""
    stub_ls.add_tasks("d", "r", [1, 2], annotated={1, 2})
    stub_ls.fault("GET", "/api/tasks/", raw=b"<html>down for maintenance</html>", times=3)
    stub_ls.fault("GET", "/api/tasks/", body={"total": None, "tasks": []}, times=2)
    event = asyncio.run(_first_event(_trigger(
        conn, deadline=datetime.now(timezone.utc) + timedelta(minutes=5), expected=2,
        max_backoff=0.1)))
    assert event["status"] == "success" and event["completed"] == 2
    assert stub_ls.count("GET", "/api/tasks/") >= 5 + 3  # the blips, then three counts


def test_blips_until_the_deadline_end_as_service_unavailable(stub_ls, conn):
    stub_ls.fault("GET", "/api/tasks/", raw=b"<html>proxy error</html>", times=10_000)
    event = asyncio.run(_first_event(_trigger(
        conn, deadline=datetime.now(timezone.utc) + timedelta(seconds=1), max_backoff=0.1)))
    assert event["status"] == "error" and event["error_type"] == "service_unavailable"
    assert "not JSON" in event["error"]


def test_warning_time_ends_the_trigger_early_once_with_the_counts(stub_ls, conn):
    """Issue 16.5: the trigger wakes the sensor at the warning time (tasks left); a round
    done before it never warns."""
    stub_ls.add_tasks("d", "r", [1, 2, 3, 4], annotated={1})
    now = datetime.now(timezone.utc)
    deadline = now + timedelta(minutes=5)
    began = time.monotonic()
    near = asyncio.run(_first_event(_trigger(conn, deadline=deadline, expected=4,
                                             poke_interval=30,
                                             warn_at=now + timedelta(seconds=0.3))))
    assert time.monotonic() - began < 5  # it woke at the warning time, not the poke interval
    assert near["status"] == "deadline_near" and near["total"] == 4 and near["completed"] == 1
    assert near["deadline"] == deadline.isoformat()
    stub_ls.annotate(2)
    stub_ls.annotate(3)
    stub_ls.annotate(4)
    done = asyncio.run(_first_event(_trigger(conn, deadline=deadline, expected=4,
                                             warn_at=now - timedelta(seconds=1))))
    assert done["status"] == "success"
