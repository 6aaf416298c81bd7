"""SIMULATED annotators against a real Label Studio: what it holds equals what was sent."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from hitl_dev import simulator
from hitl_dev.simulator import from_rectangle, plan_annotation, simulate, to_rectangle

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
              {"id": 3, "name": "triangle"}]


def make_truth(root: Path, folder: str, n: int, *, seed: int = 0, first_id: int = 1) -> dict:
    """Draw ``n`` small PNGs with 1-4 shapes under ``root/images/folder``; return their COCO."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + n):
        width, height = rng.choice([(64, 48), (96, 64), (80, 80)])
        image = Image.new("RGB", (width, height), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        file_name = f"{folder}/{image_id:05d}.png"
        for _ in range(rng.randint(1, 4)):
            w, h = rng.randint(8, width // 3), rng.randint(8, height // 3)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            category = rng.choice(CATEGORIES)
            shape = [x, y, x + w - 1, y + h - 1]
            if category["name"] == "circle":
                draw.ellipse(shape, fill=(230, 60, 60))
            elif category["name"] == "square":
                draw.rectangle(shape, fill=(60, 230, 60))
            else:
                draw.polygon([(x, y + h - 1), (x + w - 1, y + h - 1), (x + w // 2, y)],
                             fill=(60, 60, 230))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category["id"], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
        image.save(root / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width,
                       "height": height})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def task_data(image: dict, key: str = "hitl_image_id") -> dict:
    return {"image": f"/data/local-files/?d=images/{image['file_name']}",
            "hitl_key": f"sim_dag|run1|{image['id']}", "hitl_dag_id": "sim_dag",
            "hitl_run_id": "run1", key: image["id"], "hitl_reason": "test"}


def setup_project(label_studio, title: str, truth: dict, key: str = "hitl_image_id") -> int:
    project = label_studio.new_project(title)
    label_studio.add_local_storage(project)
    task_ids = label_studio.import_tasks(project, [task_data(im, key) for im in truth["images"]])
    assert len(task_ids) == len(truth["images"])
    return project


def held_by_label_studio(label_studio, project: int) -> dict[int, dict]:
    """Task id -> {"image_id", "annotations": [{"was_cancelled", "boxes": [(bbox, label)]}]}."""
    held = {}
    for task in label_studio.tasks(project):
        annotations = [
            {"was_cancelled": a["was_cancelled"],
             "boxes": sorted((from_rectangle(r) for r in a["result"]),
                             key=lambda b: (b[0][0], b[0][1]))}
            for a in label_studio.annotations(task["id"])
        ]
        held[task["id"]] = {"image_id": task["data"]["hitl_image_id"],
                            "annotations": annotations}
    return held


def assert_same_boxes(held: list, sent: list) -> None:
    sent = sorted(((b["bbox"], b["category"]) for b in sent), key=lambda b: (b[0][0], b[0][1]))
    assert len(held) == len(sent)
    for (held_box, held_label), (sent_box, sent_label) in zip(held, sent):
        assert held_label == sent_label
        assert held_box == pytest.approx(sent_box, abs=0.01)  # percent -> pixels rounding


# -- no server needed ------------------------------------------------------------------------


def test_rectangle_round_trip_is_percent_of_the_image_top_left():
    region = to_rectangle([16, 12, 32, 24], "square", 64, 48, random.Random(0))
    assert region["value"] == {"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0,
                               "rotation": 0, "rectanglelabels": ["square"]}
    assert (region["original_width"], region["original_height"]) == (64, 48)
    assert (region["from_name"], region["to_name"], region["type"]) == (
        "label", "image", "rectanglelabels")
    assert from_rectangle(region) == ([16.0, 12.0, 32.0, 24.0], "square")


def test_mistake_rate_and_kinds_follow_accuracy():
    truth = {"images": [{"id": 1, "width": 100, "height": 100}],
             "annotations": [{"id": i, "image_id": 1, "category_id": 1 + i % 3,
                              "bbox": [10, 10, 30, 30]} for i in range(4000)],
             "categories": CATEGORIES}
    names = {c["id"]: c["name"] for c in CATEGORIES}
    boxes, mistakes = plan_annotation(truth["images"][0], truth["annotations"], names,
                                      random.Random(1), accuracy=0.8)
    assert len(mistakes) / 4000 == pytest.approx(0.2, abs=0.02)
    kinds = [m["kind"] for m in mistakes]
    for kind in simulator.MISTAKE_KINDS:
        assert kinds.count(kind) / len(kinds) == pytest.approx(1 / 3, abs=0.05)
    assert len(boxes) == 4000 - kinds.count("missed")
    for m in mistakes:
        if m["kind"] == "wrong_class":
            assert m["category"] != m["truth_category"]
        if m["kind"] == "jitter":
            assert m["bbox"] != m["truth_bbox"]
            x, y, w, h = m["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 100.001 and y + h <= 100.001
    perfect, none = plan_annotation(truth["images"][0], truth["annotations"][:50], names,
                                    random.Random(1), accuracy=1.0)
    assert none == [] and [b["bbox"] for b in perfect] == [[10.0, 10.0, 30.0, 30.0]] * 50


# -- against the real server -----------------------------------------------------------------


def test_simulator_annotates_every_task_and_label_studio_holds_what_it_sent(
        label_studio, tmp_path):
    truth = make_truth(label_studio.root, "sim_exact", 12, seed=1)
    project = setup_project(label_studio, "sim exact", truth)
    log_path = tmp_path / "sim.json"

    summary = simulate(label_studio.url, label_studio.token, project, truth, workers=2,
                       until_empty=True, latency=0.05, seed=3, timeout=120, log_path=log_path)

    assert summary["simulated"] is True and summary["errors"] == []
    assert summary["tasks_seen"] == summary["annotated"] == 12 and summary["skipped"] == 0
    assert summary["boxes_submitted"] == summary["boxes_truth"] == len(truth["annotations"])
    assert summary["mistakes"] == {"missed": 0, "wrong_class": 0, "jitter": 0}
    assert json.loads(log_path.read_text()) == summary
    delays = [e["delay_s"] for e in summary["entries"]]
    assert all(0.025 <= d <= 0.075 for d in delays) and len(set(delays)) > 1  # seeded jitter
    held = held_by_label_studio(label_studio, project)
    assert len(held) == 12
    truth_by_image = {}
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for ann in truth["annotations"]:
        truth_by_image.setdefault(ann["image_id"], []).append(
            {"bbox": ann["bbox"], "category": names[ann["category_id"]]})
    for entry in summary["entries"]:
        task = held[entry["task_id"]]
        assert task["image_id"] == entry["image_id"]
        assert len(task["annotations"]) == 1 and not task["annotations"][0]["was_cancelled"]
        assert_same_boxes(task["annotations"][0]["boxes"], entry["boxes"])
        assert_same_boxes(task["annotations"][0]["boxes"], truth_by_image[entry["image_id"]])
    # Nothing is left open, and a second pass finds nothing to do.
    again = simulate(label_studio.url, label_studio.token, project, truth, timeout=30)
    assert again["tasks_seen"] == 0 and again["entries"] == []


def test_mistakes_and_skips_are_recorded_and_match_label_studio(label_studio, tmp_path, capsys):
    truth = make_truth(label_studio.root, "sim_noisy", 60, seed=2, first_id=1001)
    project = setup_project(label_studio, "sim noisy", truth)
    truth_path = tmp_path / "truth.json"
    truth_path.write_text(json.dumps(truth))
    log_path = tmp_path / "noisy.json"

    code = simulator.main([
        "--url", label_studio.url, "--token", label_studio.token, "--project", str(project),
        "--truth", str(truth_path), "--accuracy", "0.7", "--skip-rate", "0.3", "--workers", "3",
        "--until-empty", "--seed", "5", "--timeout", "120", "--log", str(log_path),
    ])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads(log_path.read_text())
    assert printed == {k: v for k, v in summary.items() if k != "entries"}
    assert summary["simulated"] is True and summary["errors"] == []
    assert summary["tasks_seen"] == 60 == summary["annotated"] + summary["skipped"]
    # Skips are drawn per task from the seed (``Random(f"{seed}:{task_id}")``), so their
    # number is fixed once Label Studio has numbered the tasks; the ids depend on what the
    # server held before, so the expected count is recomputed, not guessed (a fixed range
    # failed about once in a hundred runs).
    task_ids = sorted(e["task_id"] for e in summary["entries"])
    expected = sum(random.Random(f"5:{t}").random() < 0.3 for t in task_ids)
    assert summary["skipped"] == expected >= 1
    # about 100 boxes: 0.15-0.45 is over 3 standard deviations either side of 0.3
    rate = sum(summary["mistakes"].values()) / summary["boxes_truth"]
    assert 0.15 <= rate <= 0.45, summary  # 1 - accuracy = 0.3
    assert all(summary["mistakes"][kind] > 0 for kind in simulator.MISTAKE_KINDS)

    held = held_by_label_studio(label_studio, project)
    for entry in summary["entries"]:
        (annotation,) = held[entry["task_id"]]["annotations"]
        assert annotation["was_cancelled"] is entry["skipped"]
        assert_same_boxes(annotation["boxes"], entry["boxes"])
        missed = sum(m["kind"] == "missed" for m in entry["mistakes"])
        truth_count = sum(a["image_id"] == entry["image_id"] for a in truth["annotations"])
        assert len(entry["boxes"]) == (0 if entry["skipped"] else truth_count - missed)
        labels = {label for _, label in annotation["boxes"]}
        assert labels <= {"circle", "square", "triangle"}


def test_until_empty_waits_for_tasks_and_accepts_image_id(label_studio):
    truth = make_truth(label_studio.root, "sim_wait", 3, seed=3, first_id=2001)
    project = label_studio.new_project("sim wait")
    label_studio.add_local_storage(project)
    result = {}
    worker = threading.Thread(target=lambda: result.update(simulate(
        label_studio.url, label_studio.token, project, truth, until_empty=True, poll=0.3,
        timeout=60)))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive()  # nothing seen yet: it keeps polling
    # Tasks keyed by `image_id`, plus one whose image has no truth: left open, reported.
    tasks = [task_data(im, key="image_id") for im in truth["images"]]
    tasks.append({"image": "/data/local-files/?d=images/none.png", "image_id": 999999})
    label_studio.import_tasks(project, tasks)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert result["annotated"] == 3 and result["timed_out"] is False
    assert [e["error"] for e in result["errors"]] == ["no truth for image id 999999"]
    open_left = [t for t in label_studio.tasks(project) if not t["total_annotations"]]
    assert [t["data"]["image_id"] for t in open_left] == [999999]


def test_stop_event_and_timeout_end_the_simulation(label_studio):
    truth = make_truth(label_studio.root, "sim_stop", 2, seed=4, first_id=3001)
    project = setup_project(label_studio, "sim stop", truth)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    summary = simulate(label_studio.url, label_studio.token, project, truth, latency=30,
                       stop_event=stop, timeout=60)
    assert time.monotonic() - began < 10
    assert summary["entries"] == []
    assert all(not t["total_annotations"] for t in label_studio.tasks(project))

    # --max-tasks: one task done, the other left open.
    partial = simulate(label_studio.url, label_studio.token, project, truth, max_tasks=1,
                       until_empty=True, timeout=60)
    assert partial["tasks_seen"] == partial["annotated"] == 1
    assert sorted(t["total_annotations"] for t in label_studio.tasks(project)) == [0, 1]

    empty = label_studio.new_project("sim empty")
    began = time.monotonic()
    summary = simulate(label_studio.url, label_studio.token, empty, truth, until_empty=True,
                       timeout=2, poll=0.2)
    assert summary["timed_out"] is True and summary["tasks_seen"] == 0
    assert 2 <= time.monotonic() - began < 10
