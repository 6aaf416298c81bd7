"""The Label Studio round trip against the REAL server (session fixture ``label_studio``):
project setup, idempotent submit (also with the connection cut mid-import by a proxy),
collection with validation, and the trigger while SIMULATED annotators label."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from hitl_dev.simulator import simulate
from hitl_plugin.exceptions import LabelStudioError
from hitl_plugin.labeling.client import LabelStudioClient, run_filters
from hitl_plugin.labeling.collect import collect_corrections
from hitl_plugin.labeling.project import config_labels, ensure_project_info
from hitl_plugin.labeling.submit import submit_batch
from hitl_plugin.labeling.tasks import box_to_region
from hitl_plugin.paths import RoundPaths
from hitl_plugin.schemas import SelectionManifest
from hitl_plugin.triggers.label_studio import LabelsReadyTrigger

CLASSES = ["circle", "square", "triangle"]


def make_selection(n: int, *, dag_id: str = "dag_it", run_id: str = "manual__it",
                   model_version: str = "m1", first_id: int = 100) -> SelectionManifest:
    items = [{
        "image_id": first_id + i, "file_name": f"it/{first_id + i}.png", "width": 160,
        "height": 120, "split": "pool", "reason": "uncertainty", "score": 0.5,
        "predictions": [{"bbox": [10.0 + i, 20.0, 30.0, 40.0], "category_id": 1 + i % 3,
                         "score": 0.7}],
    } for i in range(n)]
    return SelectionManifest(
        dag_id=dag_id, run_id=run_id, dataset="it", version="v0001",
        model_version=model_version,
        categories=[{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
        strategy="uncertainty", budget=n, seed=0, items=items)


def truth_of(selection: SelectionManifest) -> dict:
    """COCO truth for the simulator: one box per image, class from the image id."""
    return {
        "categories": [c.model_dump() for c in selection.categories],
        "images": [{"id": s.image_id, "width": s.width, "height": s.height,
                    "file_name": s.file_name} for s in selection.items],
        "annotations": [{"id": k + 1, "image_id": s.image_id, "category_id": 1 + s.image_id % 3,
                         "bbox": [20.0, 30.0, 40.0, 50.0]}
                        for k, s in enumerate(selection.items)],
    }


@pytest.fixture
def client(label_studio):
    with LabelStudioClient(label_studio.url, label_studio.token) as c:
        yield c


def _setup(client, label_studio, title: str, model_version: str = "m1") -> int:
    return ensure_project_info(client, title=title, class_names=CLASSES,
                               images_root=label_studio.root / "images",
                               model_version=model_version)["id"]


def test_project_setup_labels_storage_and_model_version(label_studio, client, tmp_path):
    title = f"it-setup-{time.time_ns()}"
    pid = _setup(client, label_studio, title)
    assert _setup(client, label_studio, title) == pid  # found by title, not created twice
    assert [p["id"] for p in client.projects(title) if p["title"] == title] == [pid]
    project = client.get_project(pid)
    assert config_labels(project["label_config"]) == set(CLASSES)
    storages = client.local_storages(pid)
    assert len(storages) == 1 and storages[0]["path"] == str(label_studio.root / "images")
    # a new class is added; the storage is not registered again
    ensure_project_info(client, title=title, class_names=CLASSES + ["star"],
                        images_root=label_studio.root / "images", model_version="m1")
    assert "star" in config_labels(client.get_project(pid)["label_config"])
    assert len(client.local_storages(pid)) == 1
    # the model version follows the submitted predictions
    sel = make_selection(2, model_version="m1")
    submit_batch(client, project_id=pid, selection=sel, start=0, stop=2, dag_id="d",
                 run_id="r1", model_version="m1")
    assert client.get_project(pid)["model_version"] == "m1"
    info = ensure_project_info(client, title=title, class_names=CLASSES,
                               images_root=label_studio.root / "images", model_version="m2")
    assert info["model_version_ok"] is False  # Label Studio knows no m2 prediction yet
    submit_batch(client, project_id=pid, selection=make_selection(2, model_version="m2"),
                 start=0, stop=2, dag_id="d", run_id="r2", model_version="m2")
    assert client.get_project(pid)["model_version"] == "m2"
    tasks = list(client.iter_tasks(pid, run_filters("d", "r2")))
    assert {p["model_version"] for t in tasks for p in t["predictions"]} == {"m2"}
    # an image URL served from the local-files storage
    image = label_studio.root / "images" / "it" / "100.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    url = tasks[0]["data"]["image"]
    assert url == "/data/local-files/?d=images/it/100.png"
    got = requests.get(label_studio.url + url, headers=label_studio.headers, timeout=30)
    assert got.status_code == 200 and got.content.startswith(b"\x89PNG")


class _DropProxy:
    """Forwards to the real server; for the next ``drops`` imports, forwards the request and
    then closes the client's connection without the answer (the server did the work)."""

    def __init__(self, upstream: str, drops: int) -> None:
        state = {"drops": drops, "imports": 0}
        self.state = state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type")}
                resp = requests.request(method, upstream + self.path, data=body,
                                        headers=headers, timeout=120)
                if method == "POST" and "/import" in self.path:
                    state["imports"] += 1
                    if state["drops"] > 0:
                        state["drops"] -= 1
                        self.close_connection = True
                        self.connection.close()
                        return
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

            def do_PATCH(self):
                self._forward("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _keys(client, pid, dag_id, run_id) -> list[str]:
    return sorted(t["data"]["hitl_key"] for t in client.iter_tasks(
        pid, run_filters(dag_id, run_id), fields="task_only"))


def test_submit_is_idempotent_even_when_the_connection_drops_mid_import(label_studio, client,
                                                                        tmp_path):
    pid = _setup(client, label_studio, f"it-submit-{time.time_ns()}")
    sel = make_selection(12)
    expected = sorted(f"dag_it|manual__it|{s.image_id}" for s in sel.items)
    rpaths = RoundPaths(tmp_path / "round", tmp_path / "models")

    first = submit_batch(client, project_id=pid, selection=sel, start=0, stop=6,
                         dag_id="dag_it", run_id="manual__it", model_version="m1",
                         paths=rpaths)
    again = submit_batch(client, project_id=pid, selection=sel, start=0, stop=6,
                         dag_id="dag_it", run_id="manual__it", model_version="m1",
                         paths=rpaths)
    assert (first["submitted"], first["already_present"]) == (6, 0)
    assert (again["submitted"], again["already_present"]) == (0, 6)
    record = json.loads(Path(first["submission"]).read_text())
    assert record["status"] == "done" and len(record["tasks"]) == 6

    # The connection is cut after the server imported batch [6, 12): the task fails ...
    proxy = _DropProxy(label_studio.url, drops=1)
    try:
        cut = LabelStudioClient(proxy.url, label_studio.token, retries=3, backoff=0.05)
        with pytest.raises(LabelStudioError) as info:
            submit_batch(cut, project_id=pid, selection=sel, start=6, stop=12,
                         dag_id="dag_it", run_id="manual__it", model_version="m1",
                         paths=rpaths, attempts=1)
        assert info.value.status is None and proxy.state["imports"] == 1
        assert label_studio.token not in str(info.value)
        # ... and its retry finds the tasks instead of importing them again
        retry = submit_batch(cut, project_id=pid, selection=sel, start=6, stop=12,
                             dag_id="dag_it", run_id="manual__it", model_version="m1",
                             paths=rpaths)
        assert (retry["submitted"], retry["already_present"]) == (0, 6)
        assert proxy.state["imports"] == 1
        assert _keys(client, pid, "dag_it", "manual__it") == expected

        # Within one call: the drop is followed by a re-read, not a blind resend.
        proxy.state["drops"] = 1
        sel2 = make_selection(5, run_id="manual__it2")
        inner = submit_batch(cut, project_id=pid, selection=sel2, start=0, stop=5,
                             dag_id="dag_it", run_id="manual__it2", model_version="m1",
                             paths=RoundPaths(tmp_path / "round2", tmp_path / "models2"),
                             backoff=0.05)
        assert inner["submitted"] + inner["already_present"] == 5
        assert len(_keys(client, pid, "dag_it", "manual__it2")) == 5
    finally:
        proxy.close()

    # Another split of the same round (select re-run with a new batch size): no record of it
    # matches, so the exact range check is used, and still nothing is duplicated.
    other = submit_batch(client, project_id=pid, selection=sel, start=3, stop=9,
                         dag_id="dag_it", run_id="manual__it", model_version="m1",
                         paths=rpaths)
    assert (other["submitted"], other["already_present"]) == (0, 6)
    # The selection written again in another order, same bounds: still no duplicate.
    rewritten = sel.model_copy(update={"items": list(reversed(sel.items))})
    again = submit_batch(client, project_id=pid, selection=rewritten, start=0, stop=6,
                         dag_id="dag_it", run_id="manual__it", model_version="m1",
                         paths=rpaths)
    assert (again["submitted"], again["already_present"]) == (0, 6)
    no_record = submit_batch(client, project_id=pid, selection=sel, start=0, stop=12,
                             dag_id="dag_it", run_id="manual__it", model_version="m1")
    assert (no_record["submitted"], no_record["already_present"]) == (0, 12)
    assert _keys(client, pid, "dag_it", "manual__it") == expected


def test_collect_validates_and_maps_back_through_our_keys(label_studio, client):
    pid = _setup(client, label_studio, f"it-collect-{time.time_ns()}")
    sel = make_selection(6)
    submit_batch(client, project_id=pid, selection=sel, start=0, stop=6, dag_id="dag_it",
                 run_id="manual__it", model_version="m1")
    # A task of the same round that is not ours (forged key), imported behind our back.
    client.import_tasks(pid, [{"data": {"image": "x", "hitl_dag_id": "dag_it",
                                        "hitl_run_id": "manual__it", "hitl_image_id": 999,
                                        "hitl_key": "dag_it|manual__it|999"}},
                              {"data": {"image": "x", "hitl_dag_id": "dag_it",
                                        "hitl_run_id": "manual__it", "hitl_image_id": 101,
                                        "hitl_key": "other|run|101"}}])
    tasks = list(client.iter_tasks(pid, run_filters("dag_it", "manual__it"),
                                   fields="task_only"))
    by_key = {t["data"]["hitl_key"]: t["id"] for t in tasks}
    task = {i: by_key[f"dag_it|manual__it|{i}"] for i in range(100, 106)}
    good = [box_to_region([16, 12, 32, 24], "square", 160, 120)]
    client.create_annotation(task[100], good)
    client.create_annotation(task[101], [], was_cancelled=True)
    client.create_annotation(task[102], [box_to_region([8, 8, 16, 16], "hexagon", 160, 120)])
    client.create_annotation(task[103], [box_to_region([150, 100, 40, 40], "circle", 160, 120)])
    older = client.create_annotation(task[104], [box_to_region([1, 1, 5, 5], "circle", 160,
                                                               120)])
    time.sleep(0.05)
    newer = client.create_annotation(task[104], [box_to_region([40, 30, 20, 10], "triangle",
                                                               160, 120)])
    forged = [t["id"] for t in tasks if t["data"]["hitl_image_id"] == 999]
    client.create_annotation(forged[0], good)

    result = collect_corrections(client, project_id=pid, dag_id="dag_it", run_id="manual__it",
                                 selection=sel)
    items = {c.image_id: c for c in result.items}
    assert set(items) == {100, 101, 104}  # 105: not answered yet (pending)
    assert items[100].status == "labeled" and items[100].boxes[0].category_id == 2
    assert items[100].boxes[0].bbox == pytest.approx([16, 12, 32, 24], abs=1e-3)
    assert items[100].annotator == "admin@hitl.local" and items[100].time
    assert items[101].status == "skipped" and items[101].boxes == []
    assert items[104].annotation_id == newer["id"] and items[104].superseded == [older["id"]]
    assert items[104].boxes[0].category_id == 3
    reasons = {(r.image_id, r.task_id): r.reason for r in result.rejected}
    assert "unknown class 'hexagon'" in reasons[(102, task[102])]
    assert "outside the image" in reasons[(103, task[103])]
    assert any(i is None and "not in this round's selection" in r
               for (i, _), r in reasons.items())
    assert any(i == 101 and "does not match" in r for (i, _), r in reasons.items())
    assert len(result.rejected) == 4


async def _run_until_event(trigger, timeout=60.0):
    async def first():
        async for event in trigger.run():
            return event.payload

    return await asyncio.wait_for(first(), timeout)


def _submitted_round(label_studio, client, monkeypatch, name: str, n: int, run_id: str):
    """A project holding ``n`` submitted tasks of one round, and the connection ``ls_it``."""
    monkeypatch.setenv("AIRFLOW_CONN_LS_IT", json.dumps(
        {"conn_type": "label_studio", "host": label_studio.url,
         "password": label_studio.token}))
    pid = _setup(client, label_studio, f"it-{name}-{time.time_ns()}")
    sel = make_selection(n, run_id=run_id)
    submit_batch(client, project_id=pid, selection=sel, start=0, stop=n, dag_id="dag_it",
                 run_id=run_id, model_version="m1")
    return pid, sel


def test_trigger_against_the_real_server_while_simulated_annotators_label(
        label_studio, client, monkeypatch):
    pid, sel = _submitted_round(label_studio, client, monkeypatch, "trigger", 6, "manual__trig")
    deadline = datetime.now(timezone.utc) + timedelta(minutes=3)
    trigger = LabelsReadyTrigger(label_studio_conn_id="ls_it", project_id=pid,
                                 dag_id="dag_it", run_id="manual__trig", deadline=deadline,
                                 expected=6, poke_interval=0.3)

    # The triggerer restarts while people work: run, stop, rebuild from the JSON, resume.
    async def interrupted():
        task = asyncio.ensure_future(_run_until_event(trigger))
        await asyncio.sleep(1.0)
        assert not task.done()
        task.cancel()

    asyncio.run(interrupted())
    classpath, kwargs = trigger.serialize()
    resumed = LabelsReadyTrigger(**json.loads(json.dumps(kwargs)))
    assert resumed.deadline == deadline and resumed.serialize() == (classpath, kwargs)

    done = threading.Event()
    summary = {}

    def annotate():
        summary.update(simulate(label_studio.url, label_studio.token, pid, truth_of(sel),
                                latency=0.2, until_empty=True, seed=3, skip_rate=0.3,
                                timeout=60, stop_event=done, poll=0.3))

    worker = threading.Thread(target=annotate, daemon=True)
    began = time.monotonic()
    worker.start()
    try:
        event = asyncio.run(_run_until_event(resumed, timeout=90))
    finally:
        done.set()
        worker.join(30)
    assert event["status"] == "success" and event["total"] == 6 and event["completed"] == 6
    assert event["annotated"] + event["skipped"] == 6
    assert time.monotonic() - began < 60
    skipped = sum(1 for e in summary.get("entries", []) if e.get("skipped"))
    assert event["skipped"] == skipped


def test_deadline_policy_against_the_real_server(label_studio, client, monkeypatch):
    pid, sel = _submitted_round(label_studio, client, monkeypatch, "deadline", 4, "manual__dl")
    simulate(label_studio.url, label_studio.token, pid, truth_of(sel), max_tasks=3, seed=1)

    def run(**kw):
        trigger = LabelsReadyTrigger(
            label_studio_conn_id="ls_it", project_id=pid, dag_id="dag_it", run_id="manual__dl",
            deadline=datetime.now(timezone.utc) + timedelta(seconds=0.5), expected=4,
            poke_interval=0.2, **kw)
        return asyncio.run(_run_until_event(trigger))

    assert run(completion="fraction", min_fraction=0.75, on_timeout="fail")["status"] == \
        "partial"
    failed = run(completion="fraction", min_fraction=0.9, on_timeout="fail")
    assert failed["status"] == "error" and failed["error_type"] == "timeout"
    assert "3/4" in failed["error"]
    go_on = run(completion="all", on_timeout="continue")
    assert go_on["status"] == "partial" and go_on["fraction"] == 0.75
