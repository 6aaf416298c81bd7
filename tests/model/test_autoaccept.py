"""Auto-accept: threshold calibration, which pool images the model labels alone, the partly
accepted image a person sees, and the pseudo-labels' provenance and weight in the merge."""

from __future__ import annotations

import json

import pytest

from hitl_plugin.config import MergeConfig, SelectionConfig
from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.labeling.collect import with_auto_accepted
from hitl_plugin.labeling.tasks import ISSUES_NAME, accepted_text, to_task
from hitl_plugin.model.autoaccept import (
    acceptance,
    accepted_changed,
    all_accepted,
    calibrate_threshold,
)
from hitl_plugin.model.select import select_samples
from hitl_plugin.schemas import (
    AutoAcceptance,
    CorrectedBox,
    Correction,
    Corrections,
    ImageScore,
    Prediction,
    SelectedSample,
)

# -- calibration ----------------------------------------------------------------------------


def _val(n_images: int) -> dict:
    return {"images": [{"id": i} for i in range(n_images)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20]}
                            for i in range(n_images)],
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}


def _hit(i, score):
    return {"image_id": i, "category_id": 1, "bbox": [11, 10, 20, 20], "score": score}


def _miss(i, score):
    return {"image_id": i, "category_id": 2, "bbox": [11, 10, 20, 20], "score": score}


def test_calibration_finds_the_lowest_score_with_the_target_precision():
    # 60 right boxes at 0.90-0.99 and wrong ones at 0.95 (1), 0.6 (10) and 0.3 (20)
    preds = [_hit(i, 0.90 + 0.0015 * i) for i in range(60)]
    preds += [_miss(0, 0.95)] + [_miss(i, 0.6) for i in range(1, 11)]
    preds += [_miss(i, 0.3) for i in range(11, 31)]
    got = calibrate_threshold(_val(60), preds, precision=0.98)
    assert got["threshold"] == pytest.approx(0.90)  # 60 right of 61 above it: 0.984
    assert got["held_out_boxes"] == 61 and got["held_out_precision"] == pytest.approx(0.9836)
    # asking for more than the model reaches anywhere with enough boxes: no threshold
    assert calibrate_threshold(_val(60), preds, precision=0.999)["threshold"] is None
    # lower targets take the wrong boxes in too
    assert calibrate_threshold(_val(60), preds, precision=0.8)["threshold"] == 0.6


def test_calibration_counts_a_duplicate_as_wrong_and_needs_enough_boxes():
    preds = [_hit(i, 0.9) for i in range(40)] + [_hit(i, 0.8) for i in range(40)]  # twice
    got = calibrate_threshold(_val(40), preds, precision=0.9)
    assert got["threshold"] == 0.9 and got["held_out_boxes"] == 40
    few = calibrate_threshold(_val(10), [_hit(i, 0.9) for i in range(10)], precision=0.9)
    assert few["threshold"] is None  # 10 boxes cannot show a precision of 0.9


def test_acceptance_from_config_or_calibration():
    assert acceptance(SelectionConfig(), calibration=None, model_version="m") is None
    fixed = acceptance(SelectionConfig(auto_accept=True, auto_accept_threshold=0.8),
                       calibration={"threshold": 0.5}, model_version="m")
    assert (fixed.threshold, fixed.source) == (0.8, "config")
    cal = acceptance(SelectionConfig(auto_accept=True), model_version="m",
                     calibration={"threshold": 0.7, "held_out_precision": 0.99,
                                  "held_out_boxes": 55})
    assert (cal.threshold, cal.source, cal.held_out_boxes) == (0.7, "calibrated", 55)


def test_all_accepted_needs_every_shown_box_and_at_least_one():
    p = lambda s: Prediction(bbox=[0, 0, 5, 5], category_id=1, score=s)  # noqa: E731
    assert all_accepted([p(0.95), p(0.91)], 0.9, 0.25)
    assert all_accepted([p(0.95), p(0.1)], 0.9, 0.25)  # a box below conf is not shown
    assert not all_accepted([p(0.95), p(0.5)], 0.9, 0.25)
    assert not all_accepted([], 0.9, 0.25)  # nothing seen: a person must look
    assert not all_accepted([p(0.95)], None, 0.25)


# -- selection ------------------------------------------------------------------------------

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def _scores(tmp_path, pool_scores: dict[int, list[float]]):
    images, lines = [], []
    for i, scores in pool_scores.items():
        images.append({"id": i, "file_name": f"p/{i}.png", "width": 64, "height": 64,
                       "hitl_split": "pool"})
        preds = [Prediction(bbox=[2.0 + 10 * k, 2.0, 8.0, 8.0], category_id=1, score=s)
                 for k, s in enumerate(scores)]
        lines.append(ImageScore(image_id=i, split="pool", n_labels=0, label_error_score=0.0,
                                uncertainty={"entropy": 1 - min(scores or [0.0])},
                                predictions=preds).model_dump_json())
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {"images": images, "annotations": [], "categories": CATS}


def test_select_gives_confident_pool_images_to_the_model_and_the_rest_to_people(tmp_path):
    path, coco = _scores(tmp_path, {
        1: [0.3], 2: [0.5, 0.95], 3: [0.97, 0.96], 4: [0.99], 5: [0.92], 6: [], 7: [0.91]})
    sel = SelectionConfig(strategy="uncertainty", audit_fraction=0.0, auto_accept=True,
                          auto_accept_max_images=2)
    aa = AutoAcceptance(threshold=0.9, source="config")
    m = select_samples(path, coco, selection=sel, dag_id="d", run_id="r", dataset="s",
                       version="v1", model_version="m", budget=2, auto_accept=aa)
    assert [i.image_id for i in m.items] == [6, 1]  # the least confident go to people
    # the most confident fully accepted images, by their weakest box, up to the cap
    assert [a.image_id for a in m.auto_accepted] == [4, 3]
    assert [b.score for b in m.auto_accepted[1].boxes] == [0.97, 0.96]
    assert m.auto_accept.threshold == 0.9
    off = select_samples(path, coco, selection=SelectionConfig(strategy="uncertainty"),
                         dag_id="d", run_id="r", dataset="s", version="v1", model_version="m",
                         budget=2)
    assert off.auto_accepted == [] and off.auto_accept is None


# -- what a person sees ---------------------------------------------------------------------


def test_a_partly_accepted_pool_image_marks_the_accepted_boxes_as_the_models():
    sample = SelectedSample(
        image_id=2, file_name="p/2.png", width=64, height=64, split="pool",
        reason="uncertainty", score=0.5, predictions=[
            Prediction(bbox=[2, 2, 8, 8], category_id=1, score=0.95),
            Prediction(bbox=[20, 2, 8, 8], category_id=2, score=0.5)])
    task = to_task(sample, dag_id="d", run_id="r", model_version="m",
                   names={1: "circle", 2: "square"}, accept_threshold=0.9)
    result = task["predictions"][0]["result"]
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    assert [b["id"] for b in boxes] == ["m0", "m1"]  # both pre-filled, both editable
    texts = {r["id"]: r["value"]["text"] for r in result if r["from_name"] == ISSUES_NAME}
    assert texts == {"m0": [accepted_text(0.95)]}  # only the accepted one is marked
    plain = to_task(sample, dag_id="d", run_id="r", model_version="m",
                    names={1: "circle", 2: "square"})
    assert not [r for r in plain["predictions"][0]["result"] if r["from_name"] == ISSUES_NAME]
    # a person who redraws the accepted box counts against auto-accept
    kept = [{"bbox": [2, 2, 8, 8], "category_id": 1}]
    assert accepted_changed(sample, kept, 0.9) == 0
    assert accepted_changed(sample, [{"bbox": [3, 2, 8, 8], "category_id": 1}], 0.9) == 1


# -- collect and merge: pseudo-labels with provenance ---------------------------------------


@pytest.fixture
def store(tmp_path):
    src = tmp_path / "src"
    (src / "annotations").mkdir(parents=True)
    from PIL import Image

    images = []
    for i, split in ((1, "train"), (2, "train"), (3, "pool"), (4, "pool"), (5, "pool")):
        (src / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(src / "images" / split / f"{i}.png")
        images.append({"id": i, "file_name": f"{split}/{i}.png", "width": 64, "height": 64,
                       "split": split})
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81,
           "iscrowd": 0}
    for name, split in (("train", "train"), ("pool", "pool"), ("val", "train")):
        imgs = [{k: v for k, v in im.items() if k != "split"} for im in images
                if im["split"] == split]
        coco = {"images": imgs, "annotations": [ann] if name != "pool" else [],
                "categories": CATS}
        (src / "annotations" / f"{name}.json").write_text(json.dumps(coco))
    st = DatasetStore(tmp_path / "root", "s")
    st.import_source(src)
    return st


def _selection(threshold=0.9):
    from hitl_plugin.schemas import AutoAccepted, SelectionManifest

    person = SelectedSample(image_id=3, file_name="pool/3.png", width=64, height=64,
                            split="pool", reason="uncertainty", score=0.5, predictions=[
                                Prediction(bbox=[2, 2, 8, 8], category_id=1, score=0.95),
                                Prediction(bbox=[20, 2, 8, 8], category_id=2, score=0.5)])
    return SelectionManifest(
        dag_id="d", run_id="r1", dataset="s", version="v0001", model_version="ckpt-7",
        categories=CATS, strategy="hybrid", budget=1, seed=0, items=[person],
        auto_accept=AutoAcceptance(threshold=threshold, source="config"),
        auto_accepted=[AutoAccepted(image_id=4, file_name="pool/4.png", width=64, height=64,
                                    boxes=[Prediction(bbox=[5, 5, 10, 10], category_id=2,
                                                      score=0.97)])])


def test_the_model_labels_alone_with_provenance_and_its_own_weight(store):
    people = Corrections(dag_id="d", run_id="r1", dataset="s", version="v0001", items=[
        Correction(image_id=3, status="labeled", answer="edited", task_id=11, annotator="ann",
                   boxes=[CorrectedBox(bbox=[3, 2, 8, 8], category_id=1)])])  # moved it
    corrections = with_auto_accepted(people, _selection())
    by_id = {c.image_id: c for c in corrections.items}
    assert by_id[3].source == "human" and by_id[3].accepted_changed == 1
    assert by_id[4].source == "model" and by_id[4].model_version == "ckpt-7"
    assert by_id[4].boxes[0].score == 0.97

    out = merge_corrections(store, base_version="v0001", corrections=corrections,
                            round_key="d|r1", human_weight=3.0, decay=0.5,
                            model_weight=MergeConfig().model_weight)
    coco = store.load(out["version"])
    img = {i["id"]: i for i in coco["images"]}
    assert img[4]["hitl_split"] == "train" and img[4]["weight"] == 0.5
    assert "hitl_verified_round" not in img[4]  # pseudo-labels are not a person's check
    assert img[3]["weight"] == 3.0 and img[3]["hitl_verified_round"] == 2
    (pseudo,) = [a for a in coco["annotations"] if a["image_id"] == 4]
    assert pseudo["source"] == "model" and pseudo["annotator"] == "model"
    assert pseudo["provenance"] == {"model_version": "ckpt-7", "score": 0.97}
    report = json.loads(open(out["report"]).read())
    counts = report["counts"]
    assert counts["auto_labeled_images"] == 1 and counts["model_boxes_written"] == 1
    assert counts["accepted_boxes_changed_by_people"] == 1
    assert counts["pool_labeled"] == 1  # the person's pool image
    manifest = store.manifest(out["version"])["counts"]
    assert manifest["sources"]["model"] == 1 and manifest["splits"] == {"train": 4, "pool": 1}

    # a person later fixes the pseudo-label: counted against auto-accept
    later = Corrections(dag_id="d", run_id="r2", dataset="s", version=out["version"], items=[
        Correction(image_id=4, status="labeled", answer="edited", task_id=12, annotator="ann",
                   boxes=[CorrectedBox(bbox=[5, 5, 10, 10], category_id=1)])])
    out2 = merge_corrections(store, base_version=out["version"], corrections=later,
                             round_key="d|r2", human_weight=3.0, decay=0.5)
    assert json.loads(open(out2["report"]).read())["counts"]["model_labels_corrected"] == 1
    assert "model" not in store.manifest(out2["version"])["counts"]["sources"]


def test_the_model_may_not_relabel_a_labeled_image(store):
    from hitl_plugin.model.autoaccept import auto_corrections
    from hitl_plugin.schemas import AutoAccepted

    bad = auto_corrections([AutoAccepted(image_id=1, file_name="train/1.png", width=64,
                                         height=64, boxes=[Prediction(
                                             bbox=[1, 1, 9, 9], category_id=2, score=0.99)])],
                           "ckpt")
    out = merge_corrections(store, base_version="v0001", round_key="d|r3", human_weight=3.0,
                            decay=0.5, corrections=Corrections(
                                dag_id="d", run_id="r3", dataset="s", version="v0001",
                                items=bad))
    report = json.loads(open(out["report"]).read())
    assert report["counts"]["rejected"] == 1
    assert "pool images" in report["rejected"][0]["reason"]
    assert [a["category_id"] for a in store.load(out["version"])["annotations"]
            if a["image_id"] == 1] == [1]
