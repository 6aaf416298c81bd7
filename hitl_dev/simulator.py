"""SIMULATED annotators: ``hitl annotate-sim``.

This is not a person. It plays a labeling workforce for demos, tests and benchmarks, and it
behaves like a person in the labeling view: it lists the open tasks of a Label Studio project
through the same REST API the Label Studio UI uses, starts from the annotation the view
pre-fills (the prediction with the project's ``model_version``: an image's current labels,
or the model's boxes for a new image), looks at the image (its TRUE boxes, read from a COCO
"truth" file: the simulator's eyes) and edits the starting boxes towards it: it keeps what
is right, fixes a wrong class, redraws a bad box, deletes a box on nothing and draws a missing
one. It makes seeded mistakes at a chosen rate, each recorded: an error overlooked
(``missed``), a wrong class picked (``wrong_class``), a sloppy box (``jitter``); and it skips
some tasks. It posts the whole annotation the view would post (the model's read-only boxes
and the suspicion texts included).

Behaviours (``behaviour=``): ``review`` (the above), ``accept_all`` (submits every starting
annotation unchanged: a careless person), ``truth`` (ignores the starting annotation and
draws the truth from scratch, with the same mistakes: the simulator of earlier versions).
Every submission is written to a JSON log so that tests can compare what Label Studio holds
with what was sent.

A task is mapped to its truth through its data key ``hitl_image_id`` (our own image id, put
there by the submit operator) or ``image_id``. Plain Python: no Airflow import.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import random
import string
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

log = logging.getLogger(__name__)

MISTAKE_KINDS = ("missed", "wrong_class", "jitter")
BEHAVIOURS = ("review", "accept_all", "truth")
#: The editable control of the review view (hitl_plugin.labeling.tasks.FROM_NAME).
EDITABLE = "label"
#: A starting box overlapping a true box this much is "that object"; above GOOD_IOU it is
#: drawn well enough to keep.
MATCH_IOU = 0.5
GOOD_IOU = 0.75
PAGE_SIZE = 100


class SimulatorError(RuntimeError):
    """The simulated annotators could not talk to Label Studio."""


def _truth_index(truth: dict) -> tuple[dict[int, dict], dict[int, list[dict]], dict[int, str]]:
    images = {int(im["id"]): im for im in truth.get("images", [])}
    boxes: dict[int, list[dict]] = {}
    for ann in truth.get("annotations", []):
        boxes.setdefault(int(ann["image_id"]), []).append(ann)
    categories = {int(c["id"]): str(c["name"]) for c in truth.get("categories", [])}
    return images, boxes, categories


def _region_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(10))


def to_rectangle(bbox: list[float], label: str, width: int, height: int, rng: random.Random,
                 *, from_name: str = "label", to_name: str = "image") -> dict:
    """Convert a COCO pixel box ``[x, y, w, h]`` to a Label Studio RectangleLabels region.

    Label Studio stores percent of the image, top-left corner, with the original size.
    """
    x, y, w, h = (float(v) for v in bbox)
    return {
        "id": _region_id(rng),
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x / width,
            "y": 100.0 * y / height,
            "width": 100.0 * w / width,
            "height": 100.0 * h / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def from_rectangle(region: dict) -> tuple[list[float], str]:
    """Convert a RectangleLabels region back to a COCO pixel box and its label."""
    value = region["value"]
    width, height = float(region["original_width"]), float(region["original_height"])
    bbox = [value["x"] * width / 100.0, value["y"] * height / 100.0,
            value["width"] * width / 100.0, value["height"] * height / 100.0]
    return bbox, value["rectanglelabels"][0]


def _jitter(bbox: list[float], width: int, height: int, rng: random.Random) -> list[float]:
    """Move and resize a box by 15-35 % of its size, kept inside the image."""
    x, y, w, h = (float(v) for v in bbox)
    sign = lambda: rng.choice((-1.0, 1.0))  # noqa: E731
    dx, dy = sign() * rng.uniform(0.15, 0.35) * w, sign() * rng.uniform(0.15, 0.35) * h
    nw = max(1.0, w * (1.0 + sign() * rng.uniform(0.15, 0.35)))
    nh = max(1.0, h * (1.0 + sign() * rng.uniform(0.15, 0.35)))
    nx = min(max(0.0, x + dx), max(0.0, width - nw))
    ny = min(max(0.0, y + dy), max(0.0, height - nh))
    return [round(nx, 3), round(ny, 3), round(min(nw, width), 3), round(min(nh, height), 3)]


def plan_annotation(image: dict, truth_boxes: list[dict], categories: dict[int, str],
                    rng: random.Random, accuracy: float) -> tuple[list[dict], list[dict]]:
    """Decide which boxes a simulated annotator submits for one image.

    Each true box is a mistake with probability ``1 - accuracy``: missed, given a wrong class
    (when there is more than one class) or jittered, chosen uniformly.

    :return: ``(boxes, mistakes)``; a box is ``{"bbox", "category", "truth_id"}`` in pixels.
    """
    boxes, mistakes = [], []
    for ann in truth_boxes:
        bbox = [float(v) for v in ann["bbox"]]
        category = categories[int(ann["category_id"])]
        if rng.random() < 1.0 - accuracy:
            kinds = [k for k in MISTAKE_KINDS if k != "wrong_class" or len(categories) > 1]
            kind = rng.choice(kinds)
            mistake = {"kind": kind, "truth_id": ann.get("id"), "truth_bbox": bbox,
                       "truth_category": category}
            if kind == "wrong_class":
                category = rng.choice(sorted(c for c in categories.values() if c != category))
                mistake["category"] = category
            elif kind == "jitter":
                bbox = _jitter(bbox, int(image["width"]), int(image["height"]), rng)
                mistake["bbox"] = bbox
            mistakes.append(mistake)
            if kind == "missed":
                continue
        boxes.append({"bbox": bbox, "category": category, "truth_id": ann.get("id")})
    return boxes, mistakes


def plan_review(image: dict, start: list[dict], truth_boxes: list[dict],
                categories: dict[int, str], rng: random.Random,
                accuracy: float) -> tuple[list[dict], list[dict], list[dict], Counter]:
    """Edit a starting annotation towards the truth, as a person with ``accuracy`` would.

    :param start: the editable regions the view pre-fills (Label Studio result items).
    :return: ``(regions, boxes, mistakes, actions)``: the editable regions to submit, the
        boxes they stand for (``{"bbox", "category", "truth_id"}``), the mistakes made, and
        what was done (``kept``, ``relabeled``, ``redrawn``, ``deleted``, ``added`` and
        ``overlooked``). A right box is kept untouched (the same region, so the same
        coordinates); each fix is a chance to slip (``1 - accuracy``).
    """
    from hitl_plugin.boxes import iou

    width, height = int(image["width"]), int(image["height"])
    names = sorted(set(categories.values()))
    truth = [([float(v) for v in t["bbox"]], categories[int(t["category_id"])], t.get("id"))
             for t in truth_boxes]
    have = [from_rectangle(r) for r in start]
    pairs = sorted(((iou(b, t[0]), i, j) for i, (b, _) in enumerate(have)
                    for j, t in enumerate(truth)), reverse=True)
    match: dict[int, int] = {}
    for overlap, i, j in pairs:
        if overlap < MATCH_IOU:
            break
        if i not in match and j not in match.values():
            match[i] = j
    regions, boxes, mistakes, actions = [], [], [], Counter()

    def slip(kinds: tuple[str, ...], what: str, truth_box) -> str | None:
        if rng.random() >= 1.0 - accuracy:
            return None
        kinds = tuple(k for k in kinds if k != "wrong_class" or len(names) > 1)
        kind = rng.choice(kinds)
        mistakes.append({"kind": kind, "while": what, "truth_id": truth_box[2] if truth_box
                         else None, "truth_bbox": truth_box[0] if truth_box else None,
                         "truth_category": truth_box[1] if truth_box else None})
        return kind

    def emit(region: dict, bbox: list[float], label: str, truth_id) -> None:
        regions.append(region)
        boxes.append({"bbox": bbox, "category": label, "truth_id": truth_id})

    def drawn(bbox: list[float], label: str, kind: str | None) -> tuple[list[float], str]:
        if kind == "wrong_class":
            label = rng.choice([n for n in names if n != label])
        elif kind == "jitter":
            bbox = _jitter(bbox, width, height, rng)
        return bbox, label

    for i, (region, (bbox, label)) in enumerate(zip(start, have)):
        j = match.get(i)
        if j is None:  # a box on nothing
            if slip(("missed",), "deleting a spurious box", None):
                actions["overlooked"] += 1
                emit(region, bbox, label, None)
            else:
                actions["deleted"] += 1
            continue
        t_bbox, t_label, t_id = truth[j]
        if label == t_label and iou(bbox, t_bbox) >= GOOD_IOU:
            actions["kept"] += 1
            emit(region, bbox, label, t_id)
            continue
        relabel = label != t_label
        kind = slip(("missed", "wrong_class", "jitter"),
                    "fixing a class" if relabel else "redrawing a box", truth[j])
        if kind == "missed":
            actions["overlooked"] += 1
            emit(region, bbox, label, t_id)
            continue
        new_bbox, new_label = drawn(bbox if relabel else t_bbox, t_label, kind)
        if kind == "wrong_class" and new_label == label:
            new_label = t_label  # a slip never lands back on the old error
        edited = {**region, "value": {**region["value"], "rectanglelabels": [new_label]}}
        if not relabel or kind == "jitter":
            edited = {**to_rectangle(new_bbox, new_label, width, height, rng),
                      "id": region.get("id") or _region_id(rng)}
        actions["relabeled" if relabel else "redrawn"] += 1
        emit(edited, new_bbox, new_label, t_id)
    for j, (t_bbox, t_label, t_id) in enumerate(truth):
        if j in match.values():
            continue
        kind = slip(("missed", "wrong_class", "jitter"), "drawing a missing box", truth[j])
        if kind == "missed":
            actions["overlooked"] += 1
            continue
        bbox, label = drawn(t_bbox, t_label, kind)
        actions["added"] += 1
        emit(to_rectangle(bbox, label, width, height, rng), bbox, label, t_id)
    return regions, boxes, mistakes, actions


def shown_view(task: dict, model_version: str | None) -> tuple[list[dict], list[dict]]:
    """What the labeling view shows of a task: the whole prediction with the project's
    model version, and its editable boxes (the starting annotation)."""
    shown = next((p.get("result") or [] for p in task.get("predictions") or []
                  if p.get("model_version") == model_version), [])
    start = [r for r in shown if r.get("from_name", EDITABLE) == EDITABLE
             and r.get("type") == "rectanglelabels"]
    return shown, start


def read_only_regions(shown: list[dict], regions: list[dict]) -> list[dict]:
    """What the view posts beside the edited boxes: the model's read-only boxes, and the
    suspicion texts of the boxes still there (a deleted label's text goes with it)."""
    kept_ids = {r.get("id") for r in regions}
    return [r for r in shown if r.get("from_name", EDITABLE) != EDITABLE
            and (r.get("type") != "textarea" or r.get("id") in kept_ids
                 or not str(r.get("id", "")).startswith("l"))]


class _Client:
    """The few Label Studio calls the simulated annotators make (plain HTTP)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Token {token}"}
        self.local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.headers.update(self.headers)
        return session

    def open_tasks(self, project: int) -> list[dict]:
        """Return the project's tasks that have neither an annotation nor a skip (all pages)."""
        filters = {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "equal",
             "type": "Number", "value": 0},
            {"filter": "filter:tasks:cancelled_annotations", "operator": "equal",
             "type": "Number", "value": 0},
        ]}
        query = json.dumps({"filters": filters})
        found: list[dict] = []
        page = 1
        while True:
            response = self.session.get(
                f"{self.url}/api/tasks/", timeout=60,
                params={"project": project, "page": page, "page_size": PAGE_SIZE,
                        "query": query},
            )
            if response.status_code == 404:  # a page past the end
                break
            if response.status_code >= 400:
                raise SimulatorError(
                    f"listing tasks of project {project}: HTTP {response.status_code}: "
                    f"{response.text[:300]}"
                )
            data = response.json()
            batch = data.get("tasks", []) if isinstance(data, dict) else data
            found.extend(batch)
            if len(batch) < PAGE_SIZE:
                break
            page += 1
        # The server filter is an optimisation; the counts on each task are the rule.
        return [t for t in found if not t.get("total_annotations")
                and not t.get("cancelled_annotations")]

    def task(self, task_id: int) -> dict:
        """One task with its predictions (what the labeling view loads)."""
        response = self.session.get(f"{self.url}/api/tasks/{int(task_id)}/", timeout=60)
        if response.status_code >= 400:
            raise SimulatorError(f"reading task {task_id}: HTTP {response.status_code}: "
                                 f"{response.text[:300]}")
        return response.json()

    def model_version(self, project: int) -> str | None:
        response = self.session.get(f"{self.url}/api/projects/{int(project)}/", timeout=60)
        if response.status_code >= 400:
            raise SimulatorError(f"reading project {project}: HTTP {response.status_code}: "
                                 f"{response.text[:300]}")
        return response.json().get("model_version") or None

    def annotate(self, task_id: int, result: list[dict], *, cancelled: bool,
                 lead_time: float) -> dict:
        response = self.session.post(
            f"{self.url}/api/tasks/{task_id}/annotations/", timeout=60,
            json={"result": result, "was_cancelled": cancelled, "lead_time": lead_time},
        )
        if response.status_code >= 400:
            raise SimulatorError(
                f"annotating task {task_id}: HTTP {response.status_code}: {response.text[:300]}"
            )
        return response.json()


def simulate(
    url: str,
    token: str,
    project: int,
    truth: dict,
    *,
    accuracy: float = 1.0,
    latency: float = 0.0,
    workers: int = 1,
    until_empty: bool = False,
    seed: int = 0,
    skip_rate: float = 0.0,
    timeout: float = 600.0,
    stop_event: threading.Event | None = None,
    max_tasks: int | None = None,
    poll: float = 1.0,
    log_path: Path | str | None = None,
    behaviour: str = "review",
) -> dict:
    """Label a project's open tasks as a SIMULATED workforce; return a summary with every entry.

    :param url: Label Studio base URL.
    :param token: API token.
    :param project: project id.
    :param truth: COCO dict with the true boxes (``images``, ``annotations``, ``categories``).
    :param accuracy: probability that a true box is submitted unchanged.
    :param latency: mean seconds per task before submitting (jitter 0.5-1.5x, seeded).
    :param workers: simulated annotators working in parallel (threads).
    :param until_empty: keep polling until no open task remains and at least one task was seen
        (or ``timeout``); otherwise one pass over the tasks open now.
    :param seed: makes mistakes, skips and delays reproducible per task.
    :param skip_rate: fraction of tasks skipped (``was_cancelled: true``).
    :param timeout: overall seconds.
    :param stop_event: set it to stop early (between tasks and during delays).
    :param max_tasks: stop after this many tasks.
    :param poll: seconds between polls with ``until_empty``.
    :param log_path: write the summary JSON there too.
    :param behaviour: ``review`` (edit the pre-filled annotation towards the truth),
        ``accept_all`` (submit it unchanged) or ``truth`` (draw the truth from scratch).
    :return: ``{"simulated": True, "project", "tasks_seen", "annotated", "skipped",
        "boxes_truth", "boxes_submitted", "mistakes": {kind: n}, "errors", "timed_out",
        "elapsed_s", "entries": [...]}``; an entry is ``{"task_id", "image_id",
        "annotation_id", "skipped", "boxes": [{"bbox", "category", "truth_id"}], "mistakes",
        "delay_s"}``.
    """
    if not 0.0 <= accuracy <= 1.0 or not 0.0 <= skip_rate <= 1.0:
        raise ValueError("accuracy and skip_rate must be within [0, 1]")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
    images, truth_boxes, categories = _truth_index(truth)
    client = _Client(url, token)
    stop = stop_event or threading.Event()
    began = time.monotonic()
    deadline = began + timeout
    entries: list[dict] = []
    errors: list[dict] = []
    claimed: set[int] = set()
    lock = threading.Lock()
    work: queue.Queue[dict | None] = queue.Queue()
    state: dict = {"model_version": None}
    log.info("SIMULATED annotators (%s worker(s), accuracy %.2f, latency %.1f s) labeling "
             "project %s at %s", workers, accuracy, latency, project, client.url)

    def handle(task: dict) -> None:
        task_id = int(task["id"])
        rng = random.Random(f"{seed}:{task_id}")
        data = task.get("data") or {}
        raw_id = data.get("hitl_image_id", data.get("image_id"))
        try:
            image_id = int(raw_id)
        except (TypeError, ValueError):
            image_id = None
        if image_id is None or image_id not in images:
            with lock:
                errors.append({"task_id": task_id, "error": f"no truth for image id {raw_id!r}"})
            log.warning("SIMULATED annotator: task %s has no truth (image id %r): left open",
                        task_id, raw_id)
            return
        delay = latency * rng.uniform(0.5, 1.5) if latency > 0 else 0.0
        skipped = rng.random() < skip_rate
        image = images[image_id]
        # what the labeling view shows: the prediction with the project's model version
        shown, start = shown_view(client.task(task_id), state["model_version"])
        actions: Counter = Counter()
        if skipped:
            regions, boxes, mistakes = [], [], []
        elif behaviour == "accept_all":
            regions, mistakes = start, []
            boxes = [{"bbox": b, "category": c, "truth_id": None}
                     for b, c in map(from_rectangle, start)]
            actions["kept"] = len(start)
        elif behaviour == "review":
            regions, boxes, mistakes, actions = plan_review(
                image, start, truth_boxes.get(image_id, []), categories, rng, accuracy)
        else:
            boxes, mistakes = plan_annotation(image, truth_boxes.get(image_id, []),
                                              categories, rng, accuracy)
            regions = [to_rectangle(b["bbox"], b["category"], int(image["width"]),
                                    int(image["height"]), rng) for b in boxes]
        if delay and stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
            return
        # the view posts the whole annotation: the read-only model boxes and the texts of
        # the boxes still there come along
        others = [] if behaviour == "truth" or skipped else read_only_regions(shown, regions)
        result = regions + others
        try:
            created = client.annotate(task_id, result, cancelled=skipped, lead_time=delay)
        except (SimulatorError, requests.RequestException) as exc:
            with lock:
                errors.append({"task_id": task_id, "error": str(exc)})
            log.warning("SIMULATED annotator: task %s failed: %s", task_id, exc)
            return
        entry = {"task_id": task_id, "image_id": image_id, "annotation_id": created.get("id"),
                 "skipped": skipped, "boxes": boxes, "mistakes": mistakes,
                 "actions": dict(actions), "started_from": len(start),
                 "delay_s": round(delay, 3)}
        with lock:
            entries.append(entry)
        log.info("SIMULATED annotator: task %s (image %s): %s, %d box(es), %d mistake(s)",
                 task_id, image_id, "skipped" if skipped else "annotated", len(boxes),
                 len(mistakes))

    def worker() -> None:
        while True:
            task = work.get()
            try:
                if task is None:
                    return
                if not stop.is_set() and time.monotonic() < deadline:
                    handle(task)
            except Exception as exc:  # keep the other workers going; report it
                with lock:
                    errors.append({"task_id": task.get("id") if task else None,
                                   "error": repr(exc)})
                log.exception("SIMULATED annotator crashed on a task")
            finally:
                work.task_done()

    threads = [threading.Thread(target=worker, name=f"sim-annotator-{i}", daemon=True)
               for i in range(workers)]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        while not stop.is_set():
            if time.monotonic() > deadline:
                timed_out = True
                break
            open_tasks = [t for t in client.open_tasks(project) if int(t["id"]) not in claimed]
            if open_tasks:
                state["model_version"] = client.model_version(project)
            if max_tasks is not None:
                open_tasks = open_tasks[: max(0, max_tasks - len(claimed))]
            for task in open_tasks:
                claimed.add(int(task["id"]))
                work.put(task)
            work.join()
            if max_tasks is not None and len(claimed) >= max_tasks:
                break
            if not until_empty:
                break
            if not open_tasks and claimed:
                # Tasks left open after an error are claimed: they do not keep us polling.
                break
            stop.wait(poll if not open_tasks else 0.0)
    finally:
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join(timeout=60)
    entries.sort(key=lambda e: e["task_id"])
    mistakes = Counter(m["kind"] for e in entries for m in e["mistakes"])
    summary = {
        "simulated": True,
        "project": project,
        "accuracy": accuracy,
        "skip_rate": skip_rate,
        "seed": seed,
        "tasks_seen": len(claimed),
        "annotated": sum(1 for e in entries if not e["skipped"]),
        "skipped": sum(1 for e in entries if e["skipped"]),
        "boxes_truth": sum(len(truth_boxes.get(e["image_id"], [])) for e in entries
                           if not e["skipped"]),
        "boxes_submitted": sum(len(e["boxes"]) for e in entries),
        "mistakes": {kind: mistakes.get(kind, 0) for kind in MISTAKE_KINDS},
        "behaviour": behaviour,
        "actions": dict(sum((Counter(e.get("actions", {})) for e in entries), Counter())),
        "errors": errors,
        "timed_out": timed_out,
        "elapsed_s": round(time.monotonic() - began, 3),
        "entries": entries,
    }
    log.info("SIMULATED annotators done: %d annotated, %d skipped, %d error(s) in %.1f s",
             summary["annotated"], summary["skipped"], len(errors), summary["elapsed_s"])
    if log_path is not None:
        from hitl_plugin.schemas import write_json_atomic

        write_json_atomic(log_path, summary)
    return summary


def main(argv: list[str] | None = None, prog: str = "hitl annotate-sim") -> int:
    """Run ``hitl annotate-sim``; print the summary (without entries) as JSON."""
    import os

    parser = argparse.ArgumentParser(
        prog=prog,
        description="SIMULATED annotators (not people): label the open tasks of a Label Studio "
        "project with the true boxes from a COCO truth file, with mistakes at rate 1-ACCURACY.",
    )
    parser.add_argument("--url", default=os.environ.get("HITL_LS_URL", "http://127.0.0.1:8081"))
    parser.add_argument("--token", default=None,
                        help="API token (default HITL_LS_TOKEN or the embedded server's)")
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--truth", type=Path, required=True, help="COCO JSON with the true boxes")
    parser.add_argument("--accuracy", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.0, help="mean seconds per task")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--until-empty", action="store_true",
                        help="keep polling until no open task remains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-rate", type=float, default=0.0)
    parser.add_argument("--max-tasks", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log", type=Path, default=None, help="write every submission here")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="review",
                        help="review: edit the pre-filled boxes towards the truth (default); "
                        "accept_all: submit them unchanged; truth: draw the truth from scratch")
    args = parser.parse_args(argv)
    if args.token is None:
        from hitl_dev.labelstudio import default_token

        args.token = default_token()
    truth = json.loads(args.truth.read_text())
    try:
        summary = simulate(
            args.url, args.token, args.project, truth, accuracy=args.accuracy,
            latency=args.latency, workers=args.workers, until_empty=args.until_empty,
            seed=args.seed, skip_rate=args.skip_rate, timeout=args.timeout,
            max_tasks=args.max_tasks, log_path=args.log, behaviour=args.behaviour,
        )
    except (SimulatorError, requests.RequestException) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "entries"}, indent=1))
    failed = summary["errors"] or (args.until_empty and summary["timed_out"])
    return 1 if failed else 0


# -- a SIMULATED workforce: several people, each a Label Studio user ---------------------

#: Password of the simulated people's Label Studio accounts (local test servers only).
PERSON_PASSWORD = "simulated-person-0"


def plan_answer(image: dict, start: list[dict], truth_boxes: list[dict],
                categories: dict[int, str], rng: random.Random,
                accuracy: float) -> tuple[list[dict], list[dict], list[dict], Counter]:
    """A person's answer in which ``accuracy`` is exactly the chance that a true box is right.

    The person first edits the pre-fill as a careful reviewer would (:func:`plan_review`
    without slips: keep what is right, fix what is wrong, delete boxes on nothing, draw what
    is missing); then each true box, independently with probability ``1 - accuracy``, ends
    wrong: left out (``missed``), given another class (``wrong_class``), or drawn off its
    object, IoU < 0.5 (``sloppy``). So the share of true boxes their answer matches (IoU >=
    0.5, the same class) is a binomial draw with mean ``accuracy``: what gold tasks measure.

    :return: as :func:`plan_review`.
    """
    from hitl_plugin.labeling.gold import move_off

    regions, boxes, _, actions = plan_review(image, start, truth_boxes, categories, rng, 1.0)
    width, height = int(image["width"]), int(image["height"])
    names = sorted(set(categories.values()))
    truth = {t.get("id"): t for t in truth_boxes}
    out_regions, out_boxes, mistakes = [], [], []
    for region, box in zip(regions, boxes):
        t = truth.get(box["truth_id"]) if box["truth_id"] is not None else None
        if t is None or rng.random() >= 1.0 - accuracy:
            out_regions.append(region)
            out_boxes.append(box)
            continue
        kinds = ["missed", "sloppy"] + (["wrong_class"] if len(names) > 1 else [])
        kind = rng.choice(kinds)
        mistakes.append({"kind": kind, "truth_id": box["truth_id"],
                         "truth_bbox": [float(v) for v in t["bbox"]],
                         "truth_category": box["category"]})
        actions["overlooked" if kind == "missed" else kind] += 1
        if kind == "missed":
            continue
        label, bbox = box["category"], box["bbox"]
        if kind == "wrong_class":
            label = rng.choice([n for n in names if n != label])
        else:
            bbox = move_off([float(v) for v in t["bbox"]], width, height, rng) or bbox
        new = {**to_rectangle(bbox, label, width, height, rng), "id": region.get("id")}
        out_regions.append(new)
        out_boxes.append({"bbox": bbox, "category": label, "truth_id": box["truth_id"]})
    return out_regions, out_boxes, mistakes, actions


#: One account set-up at a time: Label Studio on SQLite dropped one of four sign-ups made at
#: the same moment (the person's token request then failed).
_ACCOUNTS = threading.Lock()


def person_token(url: str, admin_token: str, email: str,
                 password: str = PERSON_PASSWORD) -> str:
    """The API token of a SIMULATED person's own Label Studio account, made as an
    organisation adds a member: the admin's invite link, the sign-up form (or, when the
    account exists, the login form), then the person's token."""
    import re

    url = url.rstrip("/")
    admin = {"Authorization": f"Token {admin_token}"}

    def token(web: requests.Session) -> str | None:
        answer = web.get(f"{url}/api/current-user/token", timeout=60)
        return str(answer.json()["token"]) if answer.status_code == 200 else None

    with _ACCOUNTS, requests.Session() as web:
        invite = web.get(f"{url}/api/invite", headers=admin, timeout=60)
        if invite.status_code >= 400:
            raise SimulatorError(f"reading the invite link: HTTP {invite.status_code}: "
                                 f"{invite.text[:300]}")
        for attempt in range(3):
            for page in (invite.json()["invite_url"], "/user/login/"):
                found = token(web)
                if found:
                    return found
                form = web.get(f"{url}{page}", timeout=60)
                field = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
                if not field:
                    continue
                web.post(f"{url}{page}", data={"csrfmiddlewaretoken": field.group(1),
                                               "email": email, "password": password},
                         headers={"Referer": f"{url}{page}"}, allow_redirects=False,
                         timeout=60)
            found = token(web)
            if found:
                return found
            time.sleep(0.5 * (attempt + 1))
    raise SimulatorError(f"could not sign up or log in SIMULATED person {email}")


def simulate_workforce(url: str, admin_token: str, project: int, truth: dict,
                       people: list[dict], *, stop_event: threading.Event | None = None,
                       timeout: float = 600.0, poll: float = 0.5, idle_stop: float | None = None,
                       log_path: Path | str | None = None) -> dict:
    """Label a project as a SIMULATED workforce: each person is their own Label Studio user
    and works through Label Studio's labeling stream (``GET /api/projects/{id}/next``, what
    the "Label All Tasks" button serves a person), which gives an overlapped task to as many
    different people as its ``overlap`` asks and never twice to one person.

    :param people: ``{"email", "accuracy", "seed", "latency" (mean seconds, 0), "skip_rate"
        (0)}`` per person; ``accuracy`` is the chance that a true box is right in their
        answer (:func:`plan_answer`).
    :param stop_event: set it to stop; else they stop after ``timeout``, or once nobody has
        had a task for ``idle_stop`` seconds (None: only at the stop event or timeout).
    :return: ``{"simulated": True, "project", "people": {email: {"accuracy", "annotated",
        "skipped", "boxes_truth", "mistakes", "entries"}}, "errors", "elapsed_s"}``.
    """
    images, truth_boxes, categories = _truth_index(truth)
    stop = stop_event or threading.Event()
    began = time.monotonic()
    deadline = began + timeout
    errors: list[dict] = []
    lock = threading.Lock()
    results: dict[str, dict] = {}
    last_work = [time.monotonic()]

    def work(person: dict) -> None:
        email, accuracy = person["email"], float(person["accuracy"])
        client = _Client(url, person_token(url, admin_token, email))
        mine = results[email] = {"accuracy": accuracy, "simulated": True, "annotated": 0,
                                 "skipped": 0, "boxes_truth": 0, "mistakes": Counter(),
                                 "entries": []}
        model_version = client.model_version(project)
        while not stop.is_set() and time.monotonic() < deadline:
            response = client.session.get(f"{client.url}/api/projects/{project}/next",
                                          timeout=60)
            if response.status_code == 404:  # nothing left for this person now
                if idle_stop is not None and time.monotonic() - last_work[0] > idle_stop:
                    return
                stop.wait(poll)
                model_version = client.model_version(project)
                continue
            if response.status_code >= 400:
                with lock:
                    errors.append({"person": email, "error": f"next: HTTP "
                                   f"{response.status_code}: {response.text[:200]}"})
                stop.wait(poll)
                continue
            last_work[0] = time.monotonic()
            task = client.task(int(response.json()["id"]))
            task_id = int(task["id"])
            rng = random.Random(f"{person.get('seed', 0)}:{email}:{task_id}")
            data = task.get("data") or {}
            try:
                image_id = int(data.get("hitl_image_id", data.get("image_id")))
            except (TypeError, ValueError):
                image_id = None
            if image_id not in images:
                with lock:
                    errors.append({"person": email, "task_id": task_id,
                                   "error": "no truth for the task's image"})
                client.annotate(task_id, [], cancelled=True, lead_time=0.0)
                continue
            image = images[image_id]
            shown, start = shown_view(task, model_version)
            latency = float(person.get("latency", 0.0))
            delay = latency * rng.uniform(0.5, 1.5) if latency > 0 else rng.uniform(2, 20)
            skipped = rng.random() < float(person.get("skip_rate", 0.0))
            if skipped:
                regions, boxes, mistakes = [], [], []
            else:
                regions, boxes, mistakes, _ = plan_answer(
                    image, start, truth_boxes.get(image_id, []), categories, rng, accuracy)
            if latency > 0 and stop.wait(delay):
                return
            others = [] if skipped else read_only_regions(shown, regions)
            try:
                # lead_time: the seconds this person took (simulated: drawn, not slept,
                # unless a latency is set)
                created = client.annotate(task_id, regions + others, cancelled=skipped,
                                          lead_time=round(delay, 3))
            except (SimulatorError, requests.RequestException) as exc:
                with lock:
                    errors.append({"person": email, "task_id": task_id, "error": str(exc)})
                continue
            with lock:
                mine["skipped" if skipped else "annotated"] += 1
                if not skipped:
                    mine["boxes_truth"] += len(truth_boxes.get(image_id, []))
                mine["mistakes"].update(m["kind"] for m in mistakes)
                mine["entries"].append({"task_id": task_id, "image_id": image_id,
                                        "annotation_id": created.get("id"),
                                        "skipped": skipped, "boxes": boxes,
                                        "mistakes": mistakes, "lead_time": round(delay, 3)})

    def run(person: dict) -> None:
        try:
            work(person)
        except Exception as exc:  # report it; the others go on
            with lock:
                errors.append({"person": person.get("email"), "error": repr(exc)})
            log.exception("SIMULATED person %s stopped", person.get("email"))

    log.info("SIMULATED workforce of %s people labeling project %s at %s: %s", len(people),
             project, url, ", ".join(f"{p['email']} ({p['accuracy']})" for p in people))
    threads = [threading.Thread(target=run, args=(p,), name=f"sim-person-{i}", daemon=True)
               for i, p in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 60))
    for r in results.values():
        r["entries"].sort(key=lambda e: e["task_id"])
        r["mistakes"] = dict(r["mistakes"])
    summary = {"simulated": True, "project": project, "people": results, "errors": errors,
               "elapsed_s": round(time.monotonic() - began, 3)}
    log.info("SIMULATED workforce done in %.1f s: %s", summary["elapsed_s"],
             {e: (r["annotated"], r["skipped"]) for e, r in results.items()})
    if log_path is not None:
        from hitl_plugin.schemas import write_json_atomic

        write_json_atomic(log_path, summary)
    return summary
