"""``make demo``: one full human-in-the-loop round on the embedded default.

1. generates the synthetic shapes dataset (once),
2. starts Label Studio and Airflow on 127.0.0.1 and prints the logins,
3. creates the ``label_studio`` connection, unpauses the DAG and triggers a run over REST,
4. runs SIMULATED annotators against Label Studio while the sensor waits (``HUMAN=1``: waits
   for a person to label in the browser instead),
5. waits for the run and prints the round's summary,
6. leaves both servers running (``make stop`` stops them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "hitl_shapes"
log = logging.getLogger("demo")


def _step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _wrong_images(coco: dict, truth: dict, iou_min: float = 0.75) -> set[int]:
    """Labeled images whose boxes differ from the truth (a box or class missing or extra, or
    a box off by IoU < iou_min): what the synthetic data lets us count exactly."""
    from hitl_plugin.boxes import iou

    def boxes(data: dict) -> dict[int, list[tuple[int, list[float]]]]:
        out: dict[int, list] = {}
        for a in data["annotations"]:
            out.setdefault(a["image_id"], []).append((a["category_id"], a["bbox"]))
        return out

    have, want = boxes(coco), boxes(truth)
    wrong = set()
    for img in coco["images"]:
        if img.get("hitl_split", "train") != "train":
            continue
        mine, true = list(have.get(img["id"], [])), want.get(img["id"], [])
        for cat, box in true:
            match = next((m for m in mine if m[0] == cat and iou(m[1], box) >= iou_min), None)
            if match is None:
                wrong.add(img["id"])
                break
            mine.remove(match)
        if mine:
            wrong.add(img["id"])
    return wrong


def review_against_truth(base: dict, new: dict, truth: dict, image_ids: set[int],
                         iou_min: float = 0.75) -> dict:
    """What a round's answers did to the labeled images it touched, checked against the
    synthetic truth: label errors by kind before and after (an error is a true box with no
    label of its class at IoU >= iou_min: ``missing``, or one labeled with another class:
    ``class_swap``, or only a loose box: ``bad_box``; a label on nothing: ``spurious``), and
    the correct labels (right class, IoU >= iou_min) of ``base`` that the round removed."""
    from hitl_plugin.boxes import iou

    def by_image(data: dict) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            if a["image_id"] in image_ids:
                out.setdefault(a["image_id"], []).append(a)
        return out

    def errors(labels: dict[int, list[dict]]) -> dict[str, int]:
        counts = dict.fromkeys(("missing", "spurious", "class_swap", "bad_box"), 0)
        for image_id in image_ids:
            mine, true = list(labels.get(image_id, [])), want.get(image_id, [])
            for t in true:
                best = max(mine, key=lambda m: iou(m["bbox"], t["bbox"]), default=None)
                overlap = iou(best["bbox"], t["bbox"]) if best else 0.0
                if best is None or overlap < 0.5:
                    counts["missing"] += 1
                    continue
                mine.remove(best)
                if best["category_id"] != t["category_id"]:
                    counts["class_swap"] += 1
                elif overlap < iou_min:
                    counts["bad_box"] += 1
            counts["spurious"] += len(mine)
        return counts

    want = by_image(truth)
    old, now = by_image(base), by_image(new)
    correct = [a for i, anns in old.items() for a in anns
               if any(t["category_id"] == a["category_id"] and iou(t["bbox"], a["bbox"])
                      >= iou_min for t in want.get(i, []))]
    still = {a["id"] for anns in now.values() for a in anns}
    before, after = errors(old), errors(now)
    return {"errors_before": before, "errors_after": after,
            "fixed": {k: before[k] - after[k] for k in before},
            "correct_labels": len(correct),
            "correct_labels_removed": sum(1 for a in correct if a["id"] not in still)}


def _find_project(url: str, token: str, title: str) -> int | None:
    import requests

    resp = requests.get(f"{url}/api/projects", headers={"Authorization": f"Token {token}"},
                        params={"title": title, "page_size": 100}, timeout=30)
    resp.raise_for_status()
    body = resp.json()
    projects = body.get("results", body) if isinstance(body, dict) else body
    return next((p["id"] for p in projects if p.get("title") == title), None)


def _annotators(url: str, token: str, title: str, truth: dict, done: threading.Event) -> None:
    """Label every open task of the round's project until the run ends (a simulator)."""
    from hitl_dev.simulator import simulate

    project = None
    while not done.is_set() and project is None:
        project = _find_project(url, token, title)
        done.wait(2)
    while not done.is_set():
        result = simulate(url, token, project, truth, accuracy=0.95, latency=0.2, workers=2,
                          until_empty=True, seed=1, timeout=30, stop_event=done,
                          behaviour=os.environ.get("HITL_SIM_BEHAVIOUR", "review"))
        if result.get("annotated") or result.get("skipped"):
            print(f"    [simulated annotators] labeled {result['annotated']} tasks, "
                  f"skipped {result['skipped']}",
                  flush=True)
        done.wait(3)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # one line per labeled task is too much here; the demo prints its own progress
    logging.getLogger("hitl_dev.simulator").setLevel(logging.WARNING)
    t_start = time.monotonic()
    home = Path(os.environ.get("HITL_HOME") or REPO / ".hitl").absolute()
    os.environ["HITL_HOME"] = str(home)
    human = os.environ.get("HUMAN", "") not in ("", "0")
    af_port = int(os.environ.get("HITL_AIRFLOW_PORT", 8080))
    ls_port = int(os.environ.get("HITL_LS_PORT", 8081))

    from hitl_dev.labelstudio import LabelStudioServer
    from hitl_dev.stack import AirflowApi, AirflowStack
    from hitl_dev.synth import load_truth
    from hitl_plugin.config import load_config

    config = load_config(REPO / "dags" / "configs" / "shapes.yaml")
    source = config.resolve(config.dataset.source_dir)
    _step(f"1/5 synthetic dataset in {source}")
    if not (source / "annotations" / "train_truth.json").is_file():
        from hitl_dev.synth import generate

        generate(source, train=300, val=100, pool=200, classes=4, imgsz=128, noise=0.15, seed=7)
    print(f"    {source}")

    _step("2/5 Label Studio and Airflow on 127.0.0.1")
    ls = LabelStudioServer(data_dir=home / "labelstudio", document_root=home, port=ls_port)
    ls.start()
    stack = AirflowStack(home, port=af_port)
    stack.start()
    print(f"    Label Studio: {ls.url}  login {ls.username} / {ls.password}")
    print(f"    Airflow:      {stack.url}  login admin / {stack.password()}")

    _step("3/5 connection, unpause, trigger")
    api = AirflowApi(stack.url, "admin", stack.password())
    run_id = api.start_round(DAG_ID, label_studio_url=ls.url, token=ls.token,
                             conn_id=config.labeling.conn_id)
    print(f"    triggered {DAG_ID} run {run_id}")

    _step("4/5 the round runs; people label in Label Studio")
    done = threading.Event()
    title = config.labeling.project_title or f"hitl-{DAG_ID}"
    if human:
        print(f"    HUMAN=1: open {ls.url}, log in as {ls.username} / {ls.password}, open the "
              f"project '{title}' once it appears and label its tasks. The run goes on when "
              "every task is done.")
    else:
        sim = threading.Thread(target=_annotators, args=(ls.url, ls.token, title,
                                                         load_truth(source), done),
                               daemon=True)
        sim.start()

    def progress(tis: list[dict]) -> None:
        def name(t: dict) -> str:
            index = t.get("map_index", -1)
            return t["task_id"] if index is None or index < 0 else f"{t['task_id']}[{index}]"

        states = ", ".join(f"{name(t)}={t['state']}" for t in tis if t["state"])
        print(f"    [{time.monotonic() - t_start:5.0f} s] {states}", flush=True)

    try:
        run = api.wait_run(DAG_ID, run_id, timeout=3600 if human else 1500, progress=progress)
    finally:
        done.set()
    if run["state"] != "success":
        print(f"\nThe run ended {run['state']}; task logs: {stack.airflow_home / 'logs'}")
        return 1

    _step("5/5 summary")
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.paths import Layout

    rep = json.loads(Layout.at(home).round(DAG_ID, run_id).report.read_text())
    print(rep["text"])
    store = DatasetStore(home, config.dataset.name)
    truth = load_truth(source)
    base = store.load(rep["base_version"])
    labeled = {i["id"] for i in base["images"] if i.get("hitl_split", "train") == "train"}
    before = _wrong_images(base, truth)
    after = _wrong_images(store.load(rep["new_version"]), truth) & labeled
    print(f"  checked against the synthetic truth: of the {len(labeled)} labeled images, "
          f"{len(before)} had wrong labels in {rep['base_version']}, {len(after)} in "
          f"{rep['new_version']}")
    corrections = json.loads(Layout.at(home).round(DAG_ID, run_id).corrections.read_text())
    reviewed = {c["image_id"] for c in corrections["items"]
                if c["status"] == "labeled"} & labeled
    check = review_against_truth(base, store.load(rep["new_version"]), truth, reviewed)
    fixed = sum(check["fixed"].values())
    removed = check["correct_labels_removed"]
    print(f"  on the {len(reviewed)} labeled images people reviewed: label errors fixed "
          f"{fixed} (" + ", ".join(f"{n} {k}" for k, n in sorted(check["fixed"].items()))
          + f"); labels confirmed {rep.get('labels_confirmed', 0)}; correct labels wrongly "
          f"removed {removed} of {check['correct_labels']}"
          + (f" ({100 * removed / fixed:.1f} % of the fixes)" if fixed else ""))
    (home / "demo-review.json").write_text(json.dumps({"run_id": run_id, **check}, indent=1))
    cost = api.task_durations(DAG_ID, run_id)
    print("  task durations (s): " + ", ".join(f"{k} {v}" for k, v in cost["durations"].items()))
    print(f"  overhead (every task but the trainings and the wait): {cost['overhead_s']} s = "
          f"{cost['overhead_pct']} % of training ({cost['train_s']} s)")
    print(f"\nTotal wall time: {time.monotonic() - t_start:.0f} s")
    print(f"Both servers keep running: Airflow {stack.url}, Label Studio {ls.url}. "
          "Stop them with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
