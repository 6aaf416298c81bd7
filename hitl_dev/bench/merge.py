"""``hitl bench merge``: merge 10,000 corrections into a dataset the size of COCO train2017.

Builds a synthetic COCO file with COCO train2017's counts (118,287 images, ~860,000 boxes,
80 categories; no pixels, no segmentation polygons) as ``v0001`` of a store in a temporary
folder, then merges a realistic mix of corrections into it (moved boxes, class changes,
removed and added boxes, skipped images, labeled pool images, a few rejects).

Each step runs in a fresh child process, which reports its own time and peak RSS
(``VmHWM``), so the numbers are not polluted by the previous step:

- ``baseline``: a bare ``json.load`` + ``json.dump`` of the same annotations file;
- ``merge``: reading the corrections and :func:`merge_corrections` (stream, publish);
- ``rerun``: the same round again (idempotent: returns the existing version);
- ``load``: loading the merged version (sha256 check + ``json.load``).

Targets: merge time <= 1.5x baseline, merge peak RSS <= 3x the file size. ``json.dump``
encodes in Python chunks; the JSON also gives a stricter baseline, ``json.load`` +
``json.dumps`` (the C encoder) + one write, and the ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

NAME = "coco"
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 640), (427, 640)]


def _status_bytes(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmHWM``, ``VmRSS``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


# -- the synthetic dataset -----------------------------------------------------------------


def _box(rng: random.Random, width: int, height: int) -> list[float]:
    w = rng.uniform(4, width / 2)
    h = rng.uniform(4, height / 2)
    return [round(rng.uniform(0, width - w), 2), round(rng.uniform(0, height - h), 2),
            round(w, 2), round(h, 2)]


def _generate(root: str, n_images: int, n_boxes: int, n_corrections: int, seed: int) -> dict:
    """Child step: write v0001 and ``corrections.json``; return the plan's counts."""
    from hitl_plugin.dataset.store import DatasetStore, write_coco_lines
    from hitl_plugin.schemas import Corrections

    t0 = time.perf_counter()
    rng = random.Random(seed)
    n_pool = max(1, n_images // 100)
    n_train = n_images - n_pool
    sizes = [rng.choice(SIZES) for _ in range(n_images)]
    per_image = [0] * n_train
    for _ in range(n_boxes):
        per_image[rng.randrange(n_train)] += 1
    # image ids 1..n_train are train, the rest pool
    n_pool_corr = min(n_pool, max(1, n_corrections // 50))
    n_skip = n_corrections // 12
    n_unknown = min(5, n_corrections // 1000 + 1)
    n_train_corr = max(0, n_corrections - n_pool_corr - n_skip - n_unknown)
    chosen_train = rng.sample(range(1, n_train + 1), min(n_train, n_train_corr + n_skip))
    labeled_ids = set(chosen_train[:n_train_corr])
    skipped_ids = chosen_train[n_train_corr:]
    pool_ids = rng.sample(range(n_train + 1, n_images + 1), n_pool_corr)
    kept: dict[int, list[dict]] = {}
    categories = [{"id": k, "name": f"class{k}", "supercategory": "thing"} for k in range(1, 81)]

    def images():
        for i in range(1, n_images + 1):
            w, h = sizes[i - 1]
            yield json.dumps({
                "id": i, "file_name": f"train2017/{i:012d}.jpg", "width": w, "height": h,
                "license": 1 + i % 8, "date_captured": "2013-11-14 16:28:13",
                "weight": 1.0, "hitl_split": "train" if i <= n_train else "pool",
            }, separators=(",", ":"))

    def annotations():
        ann_id = 0
        for i in range(1, n_train + 1):
            w, h = sizes[i - 1]
            for _ in range(per_image[i - 1]):
                ann_id += 1
                bbox = _box(rng, w, h)
                ann = {"id": ann_id, "image_id": i, "category_id": rng.randint(1, 80),
                       "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                       "source": "original"}
                if i in labeled_ids:
                    kept.setdefault(i, []).append(ann)
                yield json.dumps(ann, separators=(",", ":"))

    def writer(out) -> dict:
        write_coco_lines(out, {"info": {"description": "COCO-train2017-sized synthetic set"},
                               "licenses": [{"id": k, "name": f"license {k}"}
                                            for k in range(1, 9)],
                               "categories": categories},
                         {"images": images(), "annotations": annotations()})
        return {"images": n_images, "annotations": n_boxes, "categories": 80,
                "splits": {"train": n_train, "pool": n_pool}, "sources": {"original": n_boxes},
                "weighted_images": 0}

    store = DatasetStore(root, NAME)
    version = store.publish(writer=writer, parent=None, round=0, note="hitl bench merge")
    generated = time.perf_counter() - t0

    items = []
    mix = {"moved": 0, "class_changed": 0, "removed": 0, "added": 0, "kept": 0}
    for i in sorted(labeled_ids):
        w, h = sizes[i - 1]
        boxes = []
        for ann in kept.get(i, []):
            r = rng.random()
            x, y, bw, bh = ann["bbox"]
            if r < 0.05:
                mix["removed"] += 1
                continue
            if r < 0.15:
                mix["moved"] += 1
                dx, dy = bw * rng.uniform(-0.15, 0.15), bh * rng.uniform(-0.15, 0.15)
                x, y = min(max(0.0, x + dx), w - bw), min(max(0.0, y + dy), h - bh)
                boxes.append({"bbox": [x, y, bw, bh], "category_id": ann["category_id"]})
            elif r < 0.22:
                mix["class_changed"] += 1
                boxes.append({"bbox": [x, y, bw, bh],
                              "category_id": 1 + ann["category_id"] % 80})
            else:  # Label Studio's percent round trip moves a box by a fraction of a pixel
                mix["kept"] += 1
                boxes.append({"bbox": [x + rng.uniform(-0.3, 0.3) if x > 0.3 else x, y, bw, bh],
                              "category_id": ann["category_id"]})
        if rng.random() < 0.3:
            mix["added"] += 1
            boxes.append({"bbox": _box(rng, w, h), "category_id": rng.randint(1, 80)})
        items.append(_item(i, "labeled", boxes, rng))
    for i in pool_ids:
        w, h = sizes[i - 1]
        boxes = [{"bbox": _box(rng, w, h), "category_id": rng.randint(1, 80)}
                 for _ in range(rng.randint(1, 5))]
        items.append(_item(i, "labeled", boxes, rng))
    items += [_item(i, "skipped", [], rng) for i in skipped_ids]
    items += [_item(n_images + 1000 + k, "labeled", [], rng) for k in range(n_unknown)]
    rng.shuffle(items)
    corrections = Corrections(dag_id="bench", run_id="merge", dataset=NAME, version=version,
                              items=items)
    path = Path(root) / "corrections.json"
    path.write_text(corrections.model_dump_json(), encoding="utf-8")
    return {
        "version": version, "generate_seconds": round(generated, 2),
        "file_bytes": store.manifest(version)["bytes"],
        "corrections_file": str(path),
        "corrections_mix": {"labeled_train_images": len(labeled_ids),
                            "labeled_pool_images": len(pool_ids), "skipped": len(skipped_ids),
                            "unknown_image_ids": n_unknown, "boxes": mix},
    }


def _item(image_id: int, status: str, boxes: list, rng: random.Random) -> dict:
    return {"image_id": image_id, "status": status, "task_id": 100000 + image_id,
            "annotation_id": 500000 + image_id if status == "labeled" else None,
            "annotator": f"annotator{rng.randint(1, 20)}", "time": "2026-01-01T12:00:00Z",
            "boxes": boxes}


# -- the measured steps (each in a fresh process) -----------------------------------------------


def _baseline(path: str, out: str) -> dict:
    start_rss = _rss_bytes()
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    t1 = time.perf_counter()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    t2 = time.perf_counter()
    os.unlink(out)
    peak = _peak_rss_bytes()
    # a stricter baseline: json.dumps (the C encoder) + one write, instead of json.dump
    t3 = time.perf_counter()
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data))
    t4 = time.perf_counter()
    os.unlink(out)
    return {"seconds": t2 - t0, "load_seconds": t1 - t0, "dump_seconds": t2 - t1,
            "dumps_write_seconds": t4 - t3, "peak_rss_bytes": peak, "start_rss_bytes": start_rss}


def _merge(root: str, corrections_file: str, version: str) -> dict:
    from hitl_plugin.dataset.merge import merge_corrections
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.schemas import Corrections

    start_rss = _rss_bytes()
    t0 = time.perf_counter()
    corrections = Corrections.model_validate_json(Path(corrections_file).read_bytes())
    t1 = time.perf_counter()
    store = DatasetStore(root, NAME)
    result = merge_corrections(store, base_version=version, corrections=corrections,
                               round_key="bench|merge", human_weight=3.0, decay=0.5,
                               report_path=Path(root) / "merge_report.json")
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "read_corrections_seconds": t1 - t0,
            "peak_rss_bytes": _peak_rss_bytes(), "start_rss_bytes": start_rss,
            "result": result}


def _load(root: str, version: str) -> dict:
    from hitl_plugin.dataset.store import DatasetStore

    t0 = time.perf_counter()
    coco = DatasetStore(root, NAME).load(version)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(coco["images"]),
            "annotations": len(coco["annotations"]), "history": len(coco["hitl_history"]),
            "peak_rss_bytes": _peak_rss_bytes()}


def _in_child(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run(*, images: int, boxes: int, corrections: int, seed: int, folder: Path) -> dict:
    root = str(folder / "root")
    load_before = os.getloadavg()
    gen = _in_child(_generate, root, images, boxes, corrections, seed)
    from hitl_plugin.dataset.store import DatasetStore

    path = str(DatasetStore(root, NAME).annotations_path(gen["version"]))
    base = _in_child(_baseline, path, str(folder / "baseline-dump.json"))
    merged = _in_child(_merge, root, gen["corrections_file"], gen["version"])
    rerun = _in_child(_merge, root, gen["corrections_file"], gen["version"])
    loaded = _in_child(_load, root, merged["result"]["version"])
    size = gen["file_bytes"]
    mib = 1024 * 1024
    report = json.loads((folder / "root" / "merge_report.json").read_text())
    return {
        "images": images, "boxes": boxes, "corrections": corrections, "seed": seed,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        # the machine is shared: the 1-minute load average before and after, for context
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "file_mib": round(size / mib, 1),
        "merge_seconds": round(merged["seconds"], 2),
        "merge_read_corrections_seconds": round(merged["read_corrections_seconds"], 2),
        "baseline_json_load_dump_seconds": round(base["seconds"], 2),
        "baseline_json_load_seconds": round(base["load_seconds"], 2),
        "baseline_json_dump_seconds": round(base["dump_seconds"], 2),
        "merge_to_baseline_ratio": round(merged["seconds"] / base["seconds"], 3),
        "strict_baseline_json_load_dumps_seconds": round(
            base["load_seconds"] + base["dumps_write_seconds"], 2),
        "merge_to_strict_baseline_ratio": round(
            merged["seconds"] / (base["load_seconds"] + base["dumps_write_seconds"]), 3),
        "merge_peak_rss_mib": round(merged["peak_rss_bytes"] / mib, 1),
        "merge_child_start_rss_mib": round(merged["start_rss_bytes"] / mib, 1),
        "merge_peak_rss_to_file_ratio": round(merged["peak_rss_bytes"] / size, 3),
        "baseline_peak_rss_mib": round(base["peak_rss_bytes"] / mib, 1),
        "idempotent_rerun_seconds": round(rerun["seconds"], 2),
        "idempotent_rerun_same_output": rerun["result"] == merged["result"],
        "merged_version_load_seconds": round(loaded["seconds"], 2),
        "merged_version_load_peak_rss_mib": round(loaded["peak_rss_bytes"] / mib, 1),
        "merged": {**merged["result"], "annotations": loaded["annotations"],
                   "history_records": loaded["history"]},
        "merge_counts": {k: report["counts"][k] for k in (
            "boxes_added", "boxes_removed", "boxes_changed", "boxes_unchanged",
            "pool_boxes_labeled")},
        "fixed_by_kind": report["fixed_by_kind"],
        "generate_seconds": gen["generate_seconds"],
        "corrections_mix": gen["corrections_mix"],
        "targets": {"ratio_max": 1.5, "rss_to_file_max": 3.0},
        "targets_met": merged["seconds"] / base["seconds"] <= 1.5
        and merged["peak_rss_bytes"] <= 3 * size,
    }


def main(argv: list[str], prog: str = "hitl bench merge") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=860_000)
    parser.add_argument("--corrections", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.images < 2 or args.boxes < 1 or args.corrections < 1:
        parser.error("need --images >= 2, --boxes >= 1, --corrections >= 1")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="hitl-bench-merge-"))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "root").exists():
        parser.error(f"{folder / 'root'} exists: give an empty --dir")
    try:
        result = run(images=args.images, boxes=args.boxes, corrections=args.corrections,
                     seed=args.seed, folder=folder)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if result["targets_met"] else 1
