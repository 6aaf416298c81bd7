"""One whole round under a real Airflow (scheduler, triggerer, API server) and a real Label Studio.

Tiny settings (64 px images, one epoch) keep it to a few minutes; the simulated annotators
label what the round submits while the deferrable sensor waits in the triggerer.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from hitl_dev.labelstudio import free_port
from hitl_dev.simulator import simulate
from hitl_dev.stack import AirflowApi, AirflowStack
from hitl_dev.synth import generate, load_truth
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.paths import Layout
from hitl_plugin.schemas import Corrections, SelectionManifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "hitl_e2e"
GATE_DAG = "hitl_e2e_gate"
#: A pipeline whose pool comes from a drifted world, and one that runs on its drift events.
DRIFT_DAG = "hitl_e2e_drift"
ON_DRIFT_DAG = "hitl_e2e_on_drift"


def _tasks(ls, project: int) -> list[dict]:
    tasks, page = [], 1
    while True:
        resp = ls.session.get(f"{ls.url}/api/tasks/", params={
            "project": project, "page": page, "page_size": 100, "fields": "all"}, timeout=30)
        if resp.status_code == 404:
            return tasks
        resp.raise_for_status()
        body = resp.json()
        batch = body["tasks"] if isinstance(body, dict) else body
        if not batch:
            return tasks
        tasks += batch
        page += 1


def _project_id(ls, title: str) -> int | None:
    resp = ls.session.get(f"{ls.url}/api/projects", params={"page_size": 1000}, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    projects = body.get("results", body) if isinstance(body, dict) else body
    return next((p["id"] for p in projects if p["title"] == title), None)


@pytest.fixture(scope="module")
def round_run(label_studio, tmp_path_factory):
    """Trigger one round over REST; annotate with the simulator; yield what happened."""
    work = tmp_path_factory.mktemp("e2e")
    root = label_studio.root  # Label Studio serves <root>/images: our storage root
    source = work / "source"
    generate(source, train=40, val=16, pool=24, classes=3, imgsz=64, noise=0.25, seed=11)
    dags = work / "dags"
    (dags / "configs").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "hitl_pipelines.py", dags)
    config = {
        "dag_id": DAG_ID,
        "storage": {"root": str(root)},
        "dataset": {"name": "e2e", "source_dir": str(source)},
        "model": {"base_checkpoint": "builtin"},
        "training": {"epochs": 1, "imgsz": 64, "batch": 8},
        "selection": {"budget": 8, "audit_fraction": 0.125, "seed": 1},
        "labeling": {"batch_size": 3, "poke_interval": 2, "timeout_hours": 0.25},
        "merge": {"human_weight": 3.0},
        "schedule": {"cron": None},
    }
    (dags / "configs" / "e2e.yaml").write_text(yaml.safe_dump(config))
    # A second pipeline whose checkpoints a person approves (the approval tests below)
    (dags / "configs" / "gate.yaml").write_text(yaml.safe_dump({
        **config, "dag_id": GATE_DAG, "dataset": {"name": "e2e_gate", "source_dir": str(source)},
        "selection": {"budget": 4, "audit_fraction": 0.0, "seed": 1},
        "gate": {"require_approval": True, "margin": 0.0,
                 "approval": {"on_reject": "keep_current"}}}))
    # The drift test below: a pool in new backgrounds, colours and sizes, and a pipeline
    # scheduled on the drift Asset of the same dataset
    drifted = work / "drift-source"
    generate(drifted, train=40, val=60, pool=60, classes=3, imgsz=64, noise=0.0, seed=12,
             drift={"kinds": ["background", "colour", "scale"], "share": 1.0})
    drift_config = {**config, "dag_id": DRIFT_DAG,
                    "dataset": {"name": "e2e_drift", "source_dir": str(drifted)},
                    "selection": {"budget": 4, "audit_fraction": 0.0, "seed": 1}}
    (dags / "configs" / "drift.yaml").write_text(yaml.safe_dump(drift_config))
    (dags / "configs" / "on_drift.yaml").write_text(yaml.safe_dump({
        **drift_config, "dag_id": ON_DRIFT_DAG,
        "schedule": {"cron": None, "on_drift": True}}))

    # The pipelines' storage root is their configs' (storage.root), not the servers' HITL_HOME:
    # the HITL view finds it there
    stack = AirflowStack(work / "airflow-home", port=free_port(), dags_folder=dags)
    stack.start()
    try:
        api = AirflowApi(stack.url, "admin", stack.password())
        run_id = api.start_round(DAG_ID, label_studio_url=label_studio.url,
                                 token=label_studio.token)

        truth = load_truth(source)
        done, sims = threading.Event(), []

        def annotators():
            project = None
            while project is None and not done.is_set():
                project = _project_id(label_studio, f"hitl-{DAG_ID}")
                done.wait(2)
            while not done.is_set():
                sims.append(simulate(label_studio.url, label_studio.token, project, truth,
                                     accuracy=0.9, workers=2, until_empty=True, seed=len(sims),
                                     timeout=20, stop_event=done))
                done.wait(2)

        thread = threading.Thread(target=annotators, daemon=True)
        thread.start()
        started = time.monotonic()
        run = api.wait_run(DAG_ID, run_id, timeout=900)
        done.set()
        thread.join(30)
        if run["state"] != "success":
            states = {(t["task_id"], t.get("map_index")): t["state"]
                      for t in api.task_instances(DAG_ID, run_id)}
            pytest.fail(f"round ended {run['state']}: {states}; logs in {stack.airflow_home}")
        yield {
            "api": api, "stack": stack, "run_id": run_id, "root": root,
            "sims": sims, "seconds": time.monotonic() - started,
        }
    finally:
        stack.stop()


def test_round_end_to_end(round_run, label_studio):
    root, run_id = round_run["root"], round_run["run_id"]
    layout = Layout.at(root)
    paths = layout.round(DAG_ID, run_id)
    selection = SelectionManifest.model_validate_json(paths.selection.read_text())
    assert len(selection.items) == 8

    # tasks in Label Studio equal the selection (keys are ours)
    project = _project_id(label_studio, f"hitl-{DAG_ID}")
    tasks = _tasks(label_studio, project)
    assert sorted(t["data"]["hitl_image_id"] for t in tasks) == sorted(
        i.image_id for i in selection.items)
    assert {t["data"]["hitl_key"] for t in tasks} == {
        f"{DAG_ID}|{run_id}|{i.image_id}" for i in selection.items}

    # a new version whose labels of the reviewed images equal what the simulator submitted:
    # boxes it drew or changed are human boxes, boxes it left as they were are the same
    # labels, stamped verified
    store = DatasetStore(root, "e2e")
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    coco = store.load("v0002")
    submitted = {e["image_id"]: e for s in round_run["sims"] for e in s["entries"]}
    labeled = {i for i, e in submitted.items() if not e["skipped"]}
    reviewed = {}
    for ann in coco["annotations"]:
        if ann.get("source") == "human" or "verified" in ann:
            reviewed.setdefault(ann["image_id"], []).append(ann)
    assert set(reviewed) <= labeled
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image_id in labeled:
        sent = sorted((b["category"], *[round(v) for v in b["bbox"]])
                      for b in submitted[image_id]["boxes"])
        got = sorted((names[a["category_id"]], *[round(v) for v in a["bbox"]])
                     for a in reviewed.get(image_id, []))
        assert got == sent, image_id
        assert all(a["round"] == 2 and a["annotator"] if a.get("source") == "human"
                   else a["verified"]["round"] == 2 for a in reviewed.get(image_id, []))
    weights = {img["id"]: img.get("weight", 1.0) for img in coco["images"]}
    assert all(weights[i] > 1.0 for i in labeled)
    assert all(w == 1.0 for i, w in weights.items() if i not in labeled)
    corrections = Corrections.model_validate_json(paths.corrections.read_text())
    assert {c.image_id for c in corrections.items if c.status == "labeled"} == labeled

    # metrics recorded next to the checkpoint, and the round report
    metrics = list((layout.root / "models" / DAG_ID).glob("*/**/metrics.json"))
    assert metrics and "map50_95" in json.loads(metrics[0].read_text())
    report = json.loads(paths.report.read_text())
    assert report["new_version"] == "v0002" and paths.plot.stat().st_size > 0
    answers = report["corrections"]  # what people did with the boxes they started from
    assert {"confirmed", "edited", "empty"} <= set(answers)
    assert answers["confirmed"] + answers["edited"] <= answers["labeled"]
    assert answers["confirmed"] + answers["edited"] > 0
    print(f"e2e round took {round_run['seconds']:.0f} s")


def test_retrying_submit_and_merge_changes_nothing(round_run, label_studio):
    api, run_id, root = round_run["api"], round_run["run_id"], round_run["root"]
    project = _project_id(label_studio, f"hitl-{DAG_ID}")
    before_tasks = sorted(t["id"] for t in _tasks(label_studio, project))
    store = DatasetStore(root, "e2e")
    before_sha = store.manifest("v0002")["sha256"]

    api.clear_tasks(DAG_ID, run_id, ["submit", "merge"])
    run = api.wait_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success"
    tis = {(t["task_id"], t.get("map_index")): t for t in api.task_instances(DAG_ID, run_id)}
    assert all(t["try_number"] >= 2 for (tid, _), t in tis.items() if tid in ("submit", "merge"))
    assert sorted(t["id"] for t in _tasks(label_studio, project)) == before_tasks
    assert store.versions() == ["v0001", "v0002"]
    assert store.manifest("v0002")["sha256"] == before_sha


def _airflow_login(page, url: str, password: str) -> None:
    """Log into Airflow's UI as a person does (the simple auth manager's form)."""
    page.goto(url)
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)


def _value(frame, testid: str):
    """The raw value behind a number the page shows (its ``data-value``)."""
    return json.loads(frame.locator(f'[data-testid="{testid}"]').first.get_attribute(
        "data-value"))


def test_the_round_in_airflows_ui_matches_its_report(round_run, label_studio, browser):
    """A person logs into Airflow, opens the HITL dashboard and the run's HITL tab: the chart
    and the numbers are the round report's, and the link opens the round's project."""
    from tests.integration.conftest import ARTIFACTS
    from tests.integration.test_review_browser import login as ls_login

    stack, run_id = round_run["stack"], round_run["run_id"]
    report = json.loads(Layout.at(round_run["root"]).round(DAG_ID, run_id).report.read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    _airflow_login(page, stack.url, stack.password())

    page.goto(f"{stack.url}/plugin/hitl")  # Browse > HITL rounds, framed by Airflow's UI
    index = page.frame_locator("iframe").first
    index.locator(f'[data-testid="pipeline-{DAG_ID}"]').wait_for(timeout=60_000)
    assert _value(index, f"latest-map-before-{DAG_ID}") == report["map50_95_before"]
    page.screenshot(path=str(ARTIFACTS / "hitl-index.png"), full_page=True)

    page.goto(f"{stack.url}/dags/{DAG_ID}/plugin/hitl-dag")  # the DAG's HITL tab
    board = page.frame_locator("iframe").first
    try:
        board.locator('[data-testid="map-chart"]').wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "hitl-dashboard-failed.png"), full_page=True)
        raise
    assert _value(board, f"map-point-before-{run_id}") == report["map50_95_before"]
    after = board.locator(f'[data-testid="map-point-after-{run_id}"]')
    if report["map50_95_after"] is None:  # no retraining after the merge in this round
        assert after.count() == 0
    else:
        assert json.loads(after.get_attribute("data-value")) == report["map50_95_after"]
    assert _value(board, f"selected-{run_id}") == report["selected"]
    page.screenshot(path=str(ARTIFACTS / "hitl-dashboard.png"), full_page=True)

    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{run_id}/plugin/hitl-run")  # the run's tab
    view = page.frame_locator("iframe").first
    view.locator(f'[data-testid="selected-{run_id}"]').wait_for(timeout=60_000)
    answers = report["corrections"]
    assert _value(view, f"selected-{run_id}") == report["selected"]
    for key in ("labeled", "confirmed", "edited", "skipped"):
        assert _value(view, f"{key}-{run_id}") == answers.get(key), key
    for kind, fixed in report["fixed"].items():
        assert _value(view, f"fixed-{kind}-{run_id}") == fixed, kind
    assert _value(view, f"map-after-{run_id}") == report["map50_95_after"]
    assert _value(view, f"new-version-{run_id}") == report["new_version"]
    page.screenshot(path=str(ARTIFACTS / "hitl-run-view.png"), full_page=True)

    project = _project_id(label_studio, f"hitl-{DAG_ID}")
    href = view.locator(f'[data-testid="ls-link-{run_id}"]').get_attribute("href")
    assert href == f"{label_studio.url}/projects/{project}/data"
    ls = context.new_page()
    ls_login(ls, label_studio.url)
    ls.goto(href)  # the link a person follows: the round's tasks in Label Studio
    # the project's page: its title, and the round's tasks counted in the data manager
    ls.get_by_text(f"hitl-{DAG_ID}").first.wait_for(timeout=60_000)
    total = len(_tasks(label_studio, project))
    ls.wait_for_function(
        "n => document.body.innerText.includes('Tasks: ') && "
        "document.body.innerText.includes(' / ' + n)", arg=total, timeout=60_000)
    assert f"/projects/{project}/data" in ls.url
    ls.screenshot(path=str(ARTIFACTS / "hitl-ls-project.png"))
    context.close()


def _approval_run(round_run, browser, answer: str, screenshot: str) -> tuple[str, dict]:
    """Start a round of the approval pipeline, answer its checkpoint in Airflow's own
    Required Actions UI as a person, and wait until the round is past the gate; return the
    run id and its task states."""
    from tests.integration.conftest import ARTIFACTS

    api, stack = round_run["api"], round_run["stack"]
    api.wait_for_dag(GATE_DAG)
    api.unpause(GATE_DAG)
    run_id = api.trigger(GATE_DAG)["dag_run_id"]

    def states() -> dict:
        return {t["task_id"]: t["state"] for t in api.task_instances(GATE_DAG, run_id)}

    deadline = time.monotonic() + 300
    while states().get("approve_checkpoint") != "awaiting_input":
        assert time.monotonic() < deadline, states()
        time.sleep(2)
    # Airflow 3.3.2 races here: when the answer comes before the scheduler has seen the
    # paused process exit, a slow scheduler loop can take that exit for the resumed try's
    # and fail the task ("finished with state success, but the task instance's state
    # attribute is running"). A person takes longer than a loop; the test waits for it.
    seen = (f"Received executor event with state success for task instance TaskInstanceKey("
            f"dag_id='{GATE_DAG}', task_id='approve_checkpoint', run_id='{run_id}'")
    log = stack.run_dir / "scheduler.log"
    while seen not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the scheduler never saw the pause: {log}"
        time.sleep(1)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    _airflow_login(page, stack.url, stack.password())
    page.goto(f"{stack.url}/dags/{GATE_DAG}/runs/{run_id}/tasks/approve_checkpoint/"
              "required_actions")
    button = page.get_by_role("button", name=answer, exact=True)
    button.wait_for(timeout=60_000)
    text = page.locator("body").inner_text()
    assert "currently promoted" in text and "candidate" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    button.click()
    while states().get("score") not in ("success", "skipped", "failed", "upstream_failed"):
        assert time.monotonic() < deadline, states()
        time.sleep(2)
    context.close()
    done = states()
    assert done.get("approve_checkpoint") == "success", (
        f"the approval task did not end with the answer {answer!r}: {done}; logs in "
        f"{stack.airflow_home}")
    # what the tests need has run: stop the round rather than wait for people
    api.fail_run(GATE_DAG, run_id)
    return run_id, done


def test_approve_in_airflows_required_actions_promotes_and_the_round_goes_on(round_run,
                                                                             browser):
    run_id, states = _approval_run(round_run, browser, "Approve", "approval-request.png")
    layout = Layout.at(round_run["root"])
    answer = json.loads(layout.round(GATE_DAG, run_id).approval.read_text())
    assert answer["approved"] is True and not answer.get("timed_out")
    promoted = json.loads(layout.promoted_file(GATE_DAG).read_text())
    assert promoted["run_id"] == run_id  # nothing was promoted before: the gate promotes
    assert states["gate"] == "success" and states["score"] == "success"


def test_reject_keeps_the_promoted_checkpoint_and_the_round_goes_on(round_run, browser):
    layout = Layout.at(round_run["root"])
    before = json.loads(layout.promoted_file(GATE_DAG).read_text())
    run_id, states = _approval_run(round_run, browser, "Reject", "approval-reject.png")
    answer = json.loads(layout.round(GATE_DAG, run_id).approval.read_text())
    assert answer["approved"] is False
    assert json.loads(layout.promoted_file(GATE_DAG).read_text()) == before
    assert not layout.round(GATE_DAG, run_id).ended.exists()
    # score ran, with the checkpoint promoted by the earlier round
    assert states["gate"] == "success" and states["score"] == "success"
    gate = round_run["api"]._call(
        "GET", f"/dags/{GATE_DAG}/dagRuns/{run_id}/taskInstances/gate/xcomEntries/checkpoint")
    value = gate["value"]
    assert (json.loads(value) if value.startswith('"') else value) == before["checkpoint"]


def test_a_drifted_pool_is_flagged_shown_in_airflows_ui_and_starts_the_opted_in_pipeline(
        round_run, browser):
    """A round whose pool comes from a new world: the drift step flags it, the drift Asset
    gets an event (Airflow's REST API lists it), the pipeline scheduled on that Asset gets
    a run, and a person sees the verdict, the p-values and the plot on the run's HITL tab
    while the round's labeling is still to come."""
    from tests.integration.conftest import ARTIFACTS

    api, stack = round_run["api"], round_run["stack"]
    for dag in (DRIFT_DAG, ON_DRIFT_DAG):
        api.wait_for_dag(dag)
        api.unpause(dag)
    run_id = api.trigger(DRIFT_DAG)["dag_run_id"]

    def states() -> dict:
        return {t["task_id"]: t["state"] for t in api.task_instances(DRIFT_DAG, run_id)}

    deadline = time.monotonic() + 300
    while (states().get("select") not in ("success", "failed", "upstream_failed")
           or states().get("drift_event") not in ("success", "skipped", "failed")):
        assert time.monotonic() < deadline, states()
        time.sleep(2)
    done = states()
    assert done["detect_drift"] == done["drift_event"] == done["select"] == "success", done
    paths = Layout.at(round_run["root"]).round(DRIFT_DAG, run_id)
    drift = json.loads(paths.drift.read_text())
    assert drift["verdict"] == "drift" and drift["n_pool"] == 60
    selection = SelectionManifest.model_validate_json(paths.selection.read_text())
    assert selection.budget == 8 and selection.drift.reserved == 4

    consumer = None  # the opted-in pipeline, started by the event
    while consumer is None or consumer.get("start_date") is None:
        runs = api._call("GET", f"/dags/{ON_DRIFT_DAG}/dagRuns")["dag_runs"]
        consumer = next((r for r in runs if r["run_type"] == "asset_triggered"), None)
        assert time.monotonic() < deadline, runs
        time.sleep(2)
    # (Airflow 3.3.2's asset events endpoint answers 500 while a run it created has not
    # started yet: its response model wants the run's start date)
    events = api._call("GET", "/assets/events", params={"source_dag_id": DRIFT_DAG,
                                                        "source_run_id": run_id})
    drift_events = [e for e in events["asset_events"] if e["uri"] == "hitl://drift/e2e_drift"]
    assert len(drift_events) == 1
    assert drift_events[0]["extra"]["round"] == run_id
    assert drift_events[0]["extra"]["reason"] == drift["reason"]
    assert [r["dag_id"] for r in drift_events[0]["created_dagruns"]] == [ON_DRIFT_DAG]
    for dag, run in ((ON_DRIFT_DAG, consumer["dag_run_id"]), (DRIFT_DAG, run_id)):
        api.fail_run(dag, run)
        api._call("PATCH", f"/dags/{dag}", json={"is_paused": True})

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    _airflow_login(page, stack.url, stack.password())
    page.goto(f"{stack.url}/dags/{DRIFT_DAG}/runs/{run_id}/plugin/hitl-run")
    view = page.frame_locator("iframe").first
    view.locator(f'[data-testid="drift-verdict-{run_id}"]').wait_for(timeout=60_000)
    assert _value(view, f"drift-verdict-{run_id}") == "drift"
    for signal, found in drift["signals"].items():
        assert _value(view, f"drift-p-{signal}-{run_id}") == found["p_value"], signal
    assert _value(view, f"drift-budget-{run_id}") == 8
    assert _value(view, f"drift-reserved-{run_id}") == 4
    view.locator(f'[data-testid="drift-verdict-{run_id}"]').scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "hitl-drift.png"), full_page=True)
    plot = view.locator(f'[data-testid="drift-plot-{run_id}"]')
    plot.scroll_into_view_if_needed()
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0")
    context.close()
