"""Merging corrections into a new dataset version (streaming, idempotent, crash-safe)."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from pathlib import Path

import pytest

from hitl_plugin.boxes import compare
from hitl_plugin.dataset import merge as merge_mod
from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.store import DatasetStore, coco_counts
from hitl_plugin.exceptions import DatasetError
from hitl_plugin.schemas import Corrections

NOW = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def store(tmp_path, source):
    st = DatasetStore(tmp_path / "root", "shapes")
    st.import_source(source)  # images 1-4 train (one box each), 7-8 pool (no boxes)
    return st


def _corr(version, items, run="r1"):
    return Corrections(dag_id="d", run_id=run, dataset="shapes", version=version, items=items)


def _lab(image_id, boxes, annotator="alice", task_id=None, time=None):
    return {"image_id": image_id, "status": "labeled", "task_id": task_id or image_id,
            "annotator": annotator, "time": time,
            "boxes": [{"bbox": b, "category_id": c} for c, b in boxes]}


def _skip(image_id):
    return {"image_id": image_id, "status": "skipped", "task_id": image_id}


def _merge(store, base, items, run="r1", **kw):
    args = {"human_weight": 3.0, "decay": 0.5, "now": NOW, **kw}
    return merge_corrections(store, base_version=base, corrections=_corr(base, items, run),
                             round_key=f"d|{run}", **args)


def _anns(coco, image_id):
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def test_correction_replaces_boxes_with_provenance_and_history(store):
    before = store.load("v0001")
    old = _anns(before, 1)
    out = _merge(store, "v0001", [
        _lab(1, [(1, [4, 6, 20, 10]), (1, [30, 20, 12, 12])], time="2026-01-02T03:04:05Z"),
        _skip(2),
    ])
    assert out["version"] == "v0002" and out["parent"] == "v0001" and out["round"] == 2
    assert (out["images_corrected"], out["skipped"], out["rejected"]) == (1, 1, 0)
    coco = store.load("v0002")
    new = _anns(coco, 1)
    assert old[0]["category_id"] == 2
    assert [(a["category_id"], a["bbox"]) for a in new] == [(1, [4.0, 6.0, 20.0, 10.0]),
                                                            (1, [30.0, 20.0, 12.0, 12.0])]
    max_old = max(a["id"] for a in before["annotations"])
    assert [a["id"] for a in new] == [max_old + 1, max_old + 2]
    for a in new:
        assert a["source"] == "human" and a["round"] == 2 and a["annotator"] == "alice"
        assert a["time"] == "2026-01-02T03:04:05Z" and a["iscrowd"] == 0
        assert a["area"] == a["bbox"][2] * a["bbox"][3]
    # skipped image and untouched images keep their original labels, verbatim
    assert _anns(coco, 2) == _anns(before, 2) and _anns(coco, 3) == _anns(before, 3)
    (record,) = coco["hitl_history"]
    assert record["image_id"] == 1 and record["round"] == 2 and record["annotator"] == "alice"
    assert record["replaced"] == old and record["replaced_by"] == [a["id"] for a in new]
    assert record["conflict"] is False
    report = json.loads(open(out["report"]).read())
    assert report["skipped"] == [2] and report["version"] == "v0002"
    # one old box: its class changed (matched); one new box: a missing label fixed
    assert report["fixed_by_kind"] == {"missing": 1, "spurious": 0, "class_swap": 1,
                                       "bad_box": 0}
    assert report["counts"]["boxes_added"] == 1 and report["counts"]["boxes_removed"] == 0
    assert store.manifest("v0002")["counts"] == {
        **coco_counts(coco), "max_annotation_id": max_old + 2,
        "merge": store.manifest("v0002")["counts"]["merge"]}
    # the parent is unchanged
    assert store.load("v0001") == before


def test_change_kinds_are_counted(store):
    # image 3 has one box: category 2 at [4, 6, 20, 10]; images 1/2 have category 2/1
    out = _merge(store, "v0001", [
        _lab(1, [(2, [4.4, 6.3, 20, 10])]),          # unchanged (sub-pixel round trip)
        _lab(2, [(2, [4, 6, 20, 10])]),              # class changed
        _lab(3, [(2, [6, 7, 20, 10])]),              # moved
        _lab(4, []),                                  # spurious box removed
    ])
    report = json.loads(open(out["report"]).read())
    assert report["fixed_by_kind"] == {"missing": 0, "spurious": 1, "class_swap": 1,
                                       "bad_box": 1}
    assert report["counts"]["boxes_unchanged"] == 1 and report["counts"]["boxes_changed"] == 2
    assert _anns(store.load("v0002"), 4) == []


def test_labeled_pool_image_joins_training(store):
    out = _merge(store, "v0001", [_lab(7, [(1, [0, 0, 5, 5])]), _skip(8)])
    assert out["pool_labeled"] == 1
    images = {i["id"]: i for i in store.load("v0002")["images"]}
    assert images[7]["hitl_split"] == "train" and images[8]["hitl_split"] == "pool"
    assert store.manifest("v0002")["counts"]["splits"] == {"train": 5, "pool": 1}
    # first labels of a pool image are not label errors fixed
    report = json.loads(Path(out["report"]).read_text())
    assert report["counts"]["pool_boxes_labeled"] == 1
    assert report["fixed_by_kind"] == {"missing": 0, "spurious": 0, "class_swap": 0,
                                       "bad_box": 0}


def test_weights_decay_over_three_rounds(store):
    _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])]), _skip(2)], run="r1")
    w = {i["id"]: i["weight"] for i in store.load("v0002")["images"]}
    assert w[1] == 3.0 and w[2] == 1.0 and w[3] == 1.0
    _merge(store, "v0002", [_lab(3, [(1, [1, 1, 5, 5])])], run="r2")
    images = {i["id"]: i for i in store.load("v0003")["images"]}
    assert images[1]["weight"] == 2.0 and images[3]["weight"] == 3.0  # 1 + (3-1)*0.5
    assert images[1]["hitl_verified_round"] == 2 and images[3]["hitl_verified_round"] == 3
    _merge(store, "v0003", [_lab(4, [(1, [1, 1, 5, 5])]), _lab(1, [(2, [2, 2, 5, 5])])],
           run="r3")
    images = {i["id"]: i for i in store.load("v0004")["images"]}
    # image 1 verified again: fresh weight; image 3 decays once; untouched stay 1.0
    assert [images[i]["weight"] for i in (1, 2, 3, 4)] == [3.0, 1.0, 2.0, 3.0]
    assert images[1]["hitl_verified_round"] == 4
    assert store.manifest("v0004")["counts"]["weighted_images"] == 3
    # with decay 0 older corrections fall back to 1.0 at once
    _merge(store, "v0004", [], run="r4", decay=0.0)
    assert {i["weight"] for i in store.load("v0005")["images"]} == {1.0}


def test_human_over_human_is_recorded_as_a_conflict(store):
    _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])], annotator="alice")], run="r1")
    out = _merge(store, "v0002", [_lab(1, [(2, [9, 9, 5, 5])], annotator="bob")], run="r2")
    assert out["conflicts"] == 1
    coco = store.load("v0003")
    (ann,) = _anns(coco, 1)
    assert ann["annotator"] == "bob" and ann["round"] == 3  # the latest round wins
    first, second = coco["hitl_history"]  # history accumulates
    assert first["round"] == 2 and first["conflict"] is False
    assert second["conflict"] is True and second["previous_round"] == 2
    assert second["previous_annotator"] == "alice"
    assert second["replaced"][0]["annotator"] == "alice"  # alice's box is kept, verbatim
    report = json.loads(open(out["report"]).read())
    assert report["conflicts"] == [{"image_id": 1, "annotator": "bob", "previous_round": 2,
                                    "previous_annotator": "alice", "changed": True}]


def test_same_round_twice_is_one_version_and_the_same_output(store):
    items = [_lab(1, [(1, [1, 1, 5, 5])]), _skip(2)]
    first = _merge(store, "v0001", items)
    sha = store.manifest("v0002")["sha256"]
    report = open(first["report"]).read()
    second = _merge(store, "v0001", items, now="2030-01-01T00:00:00+00:00")
    assert second == first
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    assert store.manifest("v0002")["sha256"] == sha and open(first["report"]).read() == report


def test_lost_report_is_rebuilt_on_retry(store):
    first = _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])])
    open(first["report"], "w").close()
    assert _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])]) == first
    rebuilt = json.loads(open(first["report"]).read())
    assert rebuilt["version"] == "v0002" and rebuilt["counts"]["images_corrected"] == 1


def test_crash_before_latest_then_retry_finishes(store, monkeypatch):
    before = store.load("v0001")

    def crash(version):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store, "publish",
                        functools.partial(DatasetStore.publish, store, _before_latest=crash))
    with pytest.raises(KeyboardInterrupt):
        _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])])
    assert store.latest() == "v0001" and store.load() == before
    assert not list(store.dir.glob(".tmp-*"))
    monkeypatch.undo()
    out = _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])])
    assert out["version"] == "v0002" and store.latest() == "v0002"
    assert store.versions() == ["v0001", "v0002"]
    assert _anns(store.load(), 1)[0]["source"] == "human"


def test_crash_inside_the_writer_leaves_nothing(store, monkeypatch):
    before = store.load("v0001")

    def boom(old, new):
        raise RuntimeError("disk full")

    monkeypatch.setattr(merge_mod, "compare", boom)  # runs mid-file
    with pytest.raises(RuntimeError, match="disk full"):
        _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])])
    assert store.versions() == ["v0001"] and store.latest() == "v0001"
    assert store.load() == before and not list(store.dir.glob(".tmp-*"))
    monkeypatch.undo()
    assert _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])])["version"] == "v0002"


def test_unknown_images_duplicates_and_bad_boxes_are_rejected(store):
    before = store.load("v0001")
    out = _merge(store, "v0001", [
        _lab(999, [(1, [1, 1, 5, 5])]),                 # not in the version
        _skip(998),
        _lab(2, [(1, [60, 1, 20, 5])]),                 # outside the 64x48 image
        _lab(3, [(7, [1, 1, 5, 5])]),                   # unknown category
        _lab(4, [(1, [1, 1, 0, 5])]),                   # no area
        _lab(1, [(1, [1, 1, 5, 5])], task_id=50),       # superseded by the next one
        _lab(1, [(2, [2, 2, 5, 5])], task_id=51),
    ])
    assert out["rejected"] == 6 and out["images_corrected"] == 1 and out["skipped"] == 0
    report = json.loads(open(out["report"]).read())
    reasons = {(r["image_id"], r["task_id"]): r["reason"] for r in report["rejected"]}
    assert "not in the base version" in reasons[(999, 999)]
    assert "not in the base version" in reasons[(998, 998)]
    assert "outside the image" in reasons[(2, 2)]
    assert "category_id 7" in reasons[(3, 3)]
    assert "no area" in reasons[(4, 4)]
    assert "duplicate" in reasons[(1, 50)]
    coco = store.load("v0002")
    for image_id in (2, 3, 4):
        assert _anns(coco, image_id) == _anns(before, image_id)
    assert [a["category_id"] for a in _anns(coco, 1)] == [2]
    assert 999 not in {a["image_id"] for a in coco["annotations"]}


def test_wrong_dataset_or_base_version_is_refused(store):
    with pytest.raises(DatasetError, match="made against v0009"):
        merge_corrections(store, base_version="v0001", corrections=_corr("v0009", []),
                          round_key="d|x", human_weight=3.0, decay=0.5)
    other = Corrections(dag_id="d", run_id="x", dataset="other", version="v0001", items=[])
    with pytest.raises(DatasetError, match="dataset 'other'"):
        merge_corrections(store, base_version="v0001", corrections=other,
                          round_key="d|x", human_weight=3.0, decay=0.5)
    assert store.versions() == ["v0001"]


def test_ids_stay_unique_across_history(store):
    coco = store.load("v0001")
    top = max(coco["annotations"], key=lambda a: a["id"])
    _merge(store, "v0001", [_lab(top["image_id"], [])], run="r1")  # remove the top id
    _merge(store, "v0002", [_lab(1 if top["image_id"] != 1 else 2, [(1, [1, 1, 5, 5])])],
           run="r2")
    coco = store.load("v0003")
    used = [a["id"] for a in coco["annotations"]]
    used += [a["id"] for h in coco["hitl_history"] for a in h["replaced"]]
    assert len(used) == len(set(used))


def test_pycocotools_loads_the_merged_version(store):
    from pycocotools.coco import COCO

    _merge(store, "v0001", [_lab(1, [(2, [1, 2, 10, 8]), (1, [30, 20, 12, 12])]),
                            _lab(7, [(1, [0, 0, 5, 5])])])
    api = COCO(str(store.annotations_path("v0002")))
    assert len(api.getAnnIds(imgIds=[1])) == 2 and len(api.getAnnIds(imgIds=[7])) == 1
    assert sorted(api.getCatIds()) == [1, 2]


# -- streaming equals a plain dict-based reference ------------------------------------------


def _fits(bbox, cat, image, cats):
    x, y, w, h = bbox
    return (cat in cats and all(math.isfinite(v) for v in bbox) and w > 0 and h > 0
            and x >= -1 and y >= -1 and x + w <= image["width"] + 1
            and y + h <= image["height"] + 1)


def naive_merge(parent: dict, corrections: Corrections, *, number, human_weight, decay, now,
                floor_id):
    """What the merge means, written the obvious way on whole dicts."""
    coco = copy.deepcopy(parent)
    cats = {c["id"] for c in coco["categories"]}
    images = {i["id"]: i for i in coco["images"]}
    last = {c.image_id: c for c in corrections.items}
    accepted = {
        i: c for i, c in last.items()
        if c.status == "labeled" and i in images
        and all(_fits(b.bbox, b.category_id, images[i], cats) for b in c.boxes)
    }
    for img in coco["images"]:
        if img["id"] in accepted:
            img.update(weight=human_weight, hitl_verified_round=number)
            if img.get("hitl_split") == "pool":
                img["hitl_split"] = "train"
        elif img.get("hitl_verified_round", number) < number:
            img["weight"] = round(1 + (img["weight"] - 1) * decay, 6)
    next_id = max([floor_id] + [a["id"] for a in coco["annotations"]]) + 1
    old = {i: [a for a in coco["annotations"] if a["image_id"] == i] for i in accepted}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in accepted]
    history = coco.setdefault("hitl_history", [])
    for i in sorted(accepted):
        c = accepted[i]
        boxes = [{"bbox": [float(v) for v in b.bbox], "category_id": b.category_id}
                 for b in c.boxes]
        diff = compare(old[i], boxes)  # the one rule of "left unchanged" (tests/test_boxes.py)
        written, new, kept = [], [], []
        for j, box in enumerate(boxes):
            if j in diff["unchanged"]:
                ann = {**old[i][diff["unchanged"][j]],
                       "verified": {"annotator": c.annotator or "unknown", "round": number,
                                    "time": c.time or now}}
                kept.append(ann)
            else:
                bbox = box["bbox"]
                ann = {"id": next_id, "image_id": i, "category_id": box["category_id"],
                       "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                       "source": "human", "round": number,
                       "annotator": c.annotator or "unknown", "time": c.time or now}
                next_id += 1
                new.append(ann)
            written.append(ann)
        coco["annotations"] += written
        kept_ids = {a["id"] for a in kept}
        record = {"image_id": i, "round": number, "time": c.time or now,
                  "annotator": c.annotator or "unknown", "task_id": c.task_id,
                  "labeling_annotation_id": c.annotation_id,
                  "replaced": [a for a in old[i] if a["id"] not in kept_ids],
                  "replaced_by": [a["id"] for a in new], "confirmed": sorted(kept_ids),
                  "changes": diff["counts"], "conflict": False}
        if c.superseded:
            record["labeling_superseded"] = c.superseded
        human = [a for a in old[i] if a.get("source") == "human"]
        if human:
            prev = max(human, key=lambda a: (a["round"], a["id"]))
            record.update(conflict=True, previous_round=prev["round"],
                          previous_annotator=prev["annotator"])
        history.append(record)
    return coco


def _random_parent(rng: random.Random) -> dict:
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 5)]
    images, anns, ann_id = [], [], 10
    for i in range(1, 41):
        w, h = rng.choice([(64, 48), (100, 80), (33, 77)])
        images.append({"id": i, "file_name": f"x/{i}.png", "width": w, "height": h,
                       "weight": 1.0, "hitl_split": "pool" if i > 32 else "train"})
        if i > 32:
            continue
        for _ in range(rng.randint(0, 4)):
            ann_id += rng.randint(1, 3)
            bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
            ann = {"id": ann_id, "image_id": i, "category_id": rng.choice([1, 2, 5]),
                   "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh],
                   "area": bw * bh, "iscrowd": 0, "source": "original"}
            if rng.random() < 0.3:  # other key orders must not fool the quick parse
                ann = dict(reversed(list(ann.items())))
            anns.append(ann)
    return {"info": {"x": 1}, "licenses": [], "categories": cats, "images": images,
            "annotations": anns}


def _random_corrections(rng, version, parent, run):
    sizes = {i["id"]: (i["width"], i["height"]) for i in parent["images"]}
    items = []
    for image_id in rng.sample(range(1, 46), 16):  # ids 41-45 do not exist
        if rng.random() < 0.2:
            items.append(_skip(image_id))
            continue
        w, h = sizes.get(image_id, (50, 50))
        boxes = []
        for _ in range(rng.randint(0, 3)):
            bw, bh = rng.uniform(1, w / 2), rng.uniform(1, h / 2)
            boxes.append((rng.choice([1, 2, 5, 5, 9]) if rng.random() < 0.1
                          else rng.choice([1, 2, 5]),
                          [rng.uniform(0, w - bw), rng.uniform(0, h - bh) + (
                              h if rng.random() < 0.05 else 0), bw, bh]))
        items.append({**_lab(image_id, boxes, annotator=rng.choice(["a", "b", None]),
                             time=rng.choice([None, "2026-02-02T00:00:00Z"])),
                      "superseded": [900 + image_id] if rng.random() < 0.2 else []})
    items.append(items[0])  # a duplicate
    return _corr(version, items, run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_merge_equals_the_naive_reference(tmp_path, seed):
    rng = random.Random(seed)
    store = DatasetStore(tmp_path / "root", "shapes")
    parent = _random_parent(rng)
    store.publish(parent, parent=None, round=0)
    version = "v0001"
    seen = {"conflicts": 0, "rejected": 0, "pool_labeled": 0, "skipped": 0}
    for round_no in range(3):
        parent = store.load(version)
        floor = store.manifest(version)["counts"].get("max_annotation_id", 0)
        corrections = _random_corrections(rng, version, parent, f"r{round_no}")
        out = merge_corrections(store, base_version=version, corrections=corrections,
                                round_key=f"d|r{round_no}", human_weight=4.0, decay=0.7,
                                now=NOW, report_path=tmp_path / f"report{round_no}.json")
        number = int(out["version"][1:])
        expected = naive_merge(parent, corrections, number=number, human_weight=4.0,
                               decay=0.7, now=NOW, floor_id=floor)
        got = store.load(out["version"])
        assert got == expected
        counts = store.manifest(out["version"])["counts"]
        assert {k: v for k, v in counts.items() if k not in ("merge", "max_annotation_id")} \
            == coco_counts(expected)
        version = out["version"]
        for key in seen:
            seen[key] += out[key]
    seen["superseded"] = sum("labeling_superseded" in h for h in got["hitl_history"])
    assert all(seen.values()), seen  # the random rounds exercised every rule


def test_kill_9_mid_merge_leaves_latest_and_a_retry_publishes_once(store, tmp_path):
    import subprocess
    import sys
    import textwrap

    corrections = _corr("v0001", [_lab(1, [(1, [1, 1, 5, 5])]), _lab(2, [])])
    path = tmp_path / "corrections.json"
    path.write_text(corrections.model_dump_json())
    code = textwrap.dedent(f"""
        import os, signal
        from hitl_plugin.dataset import merge
        from hitl_plugin.dataset.store import DatasetStore
        from hitl_plugin.schemas import Corrections

        def die(old, new):  # half of the annotations are written by now
            os.kill(os.getpid(), signal.SIGKILL)

        merge.compare = die
        merge.merge_corrections(
            DatasetStore({str(store.layout.root)!r}, "shapes"), base_version="v0001",
            corrections=Corrections.model_validate_json(open({str(path)!r}).read()),
            round_key="d|r1", human_weight=3.0, decay=0.5)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert list(store.dir.glob(".tmp-v0002-*"))  # the half-written folder, never a version
    assert store.versions() == ["v0001"] and store.latest() == "v0001"
    store.load("v0001")
    out = merge_corrections(store, base_version="v0001", corrections=corrections,
                            round_key="d|r1", human_weight=3.0, decay=0.5)
    assert out["version"] == "v0002" and store.versions() == ["v0001", "v0002"]
    store.recover()
    assert not list(store.dir.glob(".tmp-*")) and store.load()["hitl_history"]


def test_bench_merge_runs_small(tmp_path):
    from hitl_dev.bench.merge import run

    result = run(images=300, boxes=2000, corrections=60, seed=1, folder=tmp_path)
    merged, counts = result["merged"], result["merge_counts"]
    mix = result["corrections_mix"]
    assert result["idempotent_rerun_same_output"] is True
    assert merged["version"] == "v0002" and merged["rejected"] == mix["unknown_image_ids"]
    assert merged["images_corrected"] == mix["labeled_train_images"] + mix["labeled_pool_images"]
    assert merged["annotations"] == (2000 - counts["boxes_removed"] + counts["boxes_added"]
                                     + counts["pool_boxes_labeled"])
    assert merged["history_records"] == merged["images_corrected"]
    assert result["merge_seconds"] > 0 and result["merge_peak_rss_mib"] > 0


def test_a_merge_on_an_older_base_is_refused_and_latest_keeps_every_round(store):
    """Issue 13, defect 1: it used to publish a branch and point LATEST at it, dropping the
    rounds merged in between."""
    first = _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])], run="r1")
    assert first["version"] == "v0002"
    with pytest.raises(DatasetError, match=r"made against v0001, but LATEST is v0002"):
        _merge(store, "v0001", [_lab(2, [(1, [2, 2, 5, 5])])], run="r2")
    assert store.versions() == ["v0001", "v0002"] and store.latest() == "v0002"
    # a retry of the round that did land is still idempotent
    assert _merge(store, "v0001", [_lab(1, [(1, [1, 1, 5, 5])])], run="r1") == first
