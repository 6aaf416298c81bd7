"""Each kind of answer a reviewer can give, against the real Label Studio: unchanged, one box
edited, one box deleted, one box added, and an empty answer under each policy. In each case
the new version holds exactly what the person left, and every other image is untouched.

The answers are posted the way the labeling view posts them: the whole pre-filled annotation
(editable boxes, the model's read-only boxes, the suspicion texts) with the person's change.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.review_round import (
    LABELS,
    answer,
    collect_and_merge,
    review_round,
    starting_annotation,
)

pytestmark = pytest.mark.integration


def _boxes(coco: dict, image_id: int) -> list[dict]:
    return sorted((a for a in coco["annotations"] if a["image_id"] == image_id),
                  key=lambda a: a["id"])


def _editable(result: list[dict]) -> list[dict]:
    return [r for r in result if r["from_name"] == "label"]


def test_each_kind_of_answer_changes_exactly_what_the_person_changed(label_studio):
    rr = review_round(label_studio)
    base = rr.rnd.store.load(rr.version)
    start = {i: starting_annotation(label_studio, rr, i) for i in rr.tasks}
    # the starting annotation is the image's current labels, by annotation id
    assert sorted(r["id"] for r in _editable(start[1])) == ["l11", "l12"]
    assert any(r["from_name"] == "issues" and r["id"] == "l11" for r in start[1])
    assert any(r["from_name"] == "model" for r in start[1])

    answer(label_studio, rr, 1, start[1])  # 1: submitted unchanged
    edited = start[2]  # 2: one class changed (circle -> square), the other box left
    next(r for r in edited if r["id"] == "l21")["value"]["rectanglelabels"] = ["square"]
    answer(label_studio, rr, 2, edited)
    answer(label_studio, rr, 3, [r for r in start[3] if r["id"] != "l32"])  # 3: one deleted
    added = start[4] + [{**_editable(start[4])[0], "id": "new1", "value": {
        **_editable(start[4])[0]["value"], "x": 60.0, "y": 50.0, "rectanglelabels": ["circle"]}}]
    answer(label_studio, rr, 4, added)  # 4: one box added
    answer(label_studio, rr, 5, [])  # 5: empty, under the default policy (reject)
    # 6: no answer yet (pending)

    collected, merged, coco = collect_and_merge(label_studio, rr)
    corrections = json.loads(rr.rnd.paths.corrections.read_text())
    answers = {c["image_id"]: c["answer"] for c in corrections["items"]}
    assert answers == {1: "confirmed", 2: "edited", 3: "edited", 4: "edited"}
    assert [(r["image_id"], r["answer"]) for r in corrections["rejected"]] == [(5, "empty")]
    assert (collected["labeled"], collected["rejected"], collected["pending"]) == (4, 1, 1)

    def same(a, b):  # an untouched label: the very same annotation, maybe stamped verified
        return {k: v for k, v in a.items() if k != "verified"} == b

    old = {i: _boxes(base, i) for i in LABELS}
    new = {i: _boxes(coco, i) for i in LABELS}
    # 1: confirmed: the same labels, stamped verified by the person of this round
    assert all(same(a, b) for a, b in zip(new[1], old[1])) and len(new[1]) == 2
    assert all(a["verified"]["round"] == 2 and a["verified"]["annotator"] for a in new[1])
    # 2: the changed box is a human box of the new class at the same place; the other stays
    assert same(new[2][0], old[2][1])
    human = new[2][1]
    assert (human["source"], human["category_id"]) == ("human", 2)
    assert human["bbox"] == pytest.approx(old[2][0]["bbox"], abs=0.01)
    # 3: the deleted box is gone (and in the history); the other stays
    assert len(new[3]) == 1 and same(new[3][0], old[3][0])
    record = next(h for h in coco["hitl_history"] if h["image_id"] == 3)
    assert [a["id"] for a in record["replaced"]] == [32] and record["confirmed"] == [31]
    # 4: the added box joins the kept one
    assert same(new[4][0], old[4][0]) and new[4][1]["source"] == "human"
    assert new[4][1]["bbox"][:2] == pytest.approx([60.0, 40.0], abs=0.01)
    # 5 (empty, rejected), 6 (pending) and 9 (never selected): untouched, not upweighted
    for i in (5, 6, 9):
        assert new[i] == old[i]
    weights = {img["id"]: img["weight"] for img in coco["images"]}
    assert {i: w for i, w in weights.items() if w != 1.0} == {1: 3.0, 2: 3.0, 3: 3.0, 4: 3.0}
    assert merged["images_corrected"] == 4

    # the round report counts what people did with what they started from
    report = json.loads(rr.rnd.paths.merge_report.read_text())
    assert report["counts"]["labels_confirmed"] == 2 + 1 + 1 + 1


def test_an_empty_answer_under_no_objects_removes_the_labels(label_studio):
    rr = review_round(label_studio, empty_answer="no_objects", images=(5, 6))
    answer(label_studio, rr, 5, [])
    answer(label_studio, rr, 6, starting_annotation(label_studio, rr, 6))
    collected, merged, coco = collect_and_merge(label_studio, rr)
    corrections = json.loads(rr.rnd.paths.corrections.read_text())
    assert {c["image_id"]: c["answer"] for c in corrections["items"]} == {5: "empty",
                                                                          6: "confirmed"}
    assert not _boxes(coco, 5) and len(_boxes(coco, 6)) == 1
    record = next(h for h in coco["hitl_history"] if h["image_id"] == 5)
    assert sorted(a["id"] for a in record["replaced"]) == [51, 52]  # kept in the history


def test_an_answer_that_accepts_everything_removes_no_label(label_studio):
    """A careless reviewer who submits every task as it comes removes nothing."""
    rr = review_round(label_studio, pool=True)
    for image_id in rr.tasks:
        answer(label_studio, rr, image_id, starting_annotation(label_studio, rr, image_id))
    _, merged, coco = collect_and_merge(label_studio, rr)
    base = rr.rnd.store.load(rr.version)
    for image_id in LABELS:
        assert [{k: v for k, v in a.items() if k != "verified"}
                for a in _boxes(coco, image_id)] == _boxes(base, image_id)
    # the pool image takes the model's box it started from
    (pool_box,) = _boxes(coco, 7)
    assert pool_box["source"] == "human" and pool_box["bbox"] == pytest.approx([40, 40, 20, 20])
    assert merged["pool_labeled"] == 1


def test_simulated_reviewers_edit_what_the_view_shows_towards_the_truth(label_studio):
    """SIMULATED people start from the pre-filled labels: a perfect one leaves the right
    labels as they were and fixes the wrong ones; a careless one changes nothing."""
    from hitl_dev.simulator import simulate

    rr = review_round(label_studio, images=(1, 2, 3))
    base = rr.rnd.store.load(rr.version)
    # what the images really show: image 1's first label is a star, image 3's second box
    # is on nothing, image 2 has a circle nobody labeled
    truth = json.loads(json.dumps(base))
    for a in truth["annotations"]:
        if a["id"] == 11:
            a["category_id"] = 3
    truth["annotations"] = [a for a in truth["annotations"] if a["id"] != 32]
    truth["annotations"].append({"id": 99, "image_id": 2, "category_id": 1,
                                 "bbox": [70, 5, 20, 20]})
    summary = simulate(label_studio.url, label_studio.token, rr.project, truth, accuracy=1.0,
                       seed=3)
    assert summary["simulated"] and summary["annotated"] == 3 and not summary["errors"]
    assert summary["actions"] == {"kept": 4, "relabeled": 1, "deleted": 1, "added": 1}
    _, _, coco = collect_and_merge(label_studio, rr)
    got = {i: sorted((a["category_id"], *[round(v) for v in a["bbox"]])
                     for a in _boxes(coco, i)) for i in (1, 2, 3)}
    want = {i: sorted((a["category_id"], *[round(v) for v in a["bbox"]])
                      for a in truth["annotations"] if a["image_id"] == i) for i in (1, 2, 3)}
    assert got == want
    kept = [a for i in (1, 2, 3) for a in _boxes(coco, i) if "verified" in a]
    assert sorted(a["id"] for a in kept) == [12, 21, 22, 31]  # the right labels, as they were

    careless = review_round(label_studio, images=(1, 2, 3))
    summary = simulate(label_studio.url, label_studio.token, careless.project, truth,
                       behaviour="accept_all")
    assert summary["actions"] == {"kept": 6}
    _, _, coco = collect_and_merge(label_studio, careless)
    before = careless.rnd.store.load(careless.version)
    for i in (1, 2, 3):
        assert [{k: v for k, v in a.items() if k != "verified"} for a in _boxes(coco, i)] == \
            _boxes(before, i)


def test_a_missing_or_wrong_project_fails_collect_instead_of_reading_no_answers(label_studio):
    """Issue 13, defect 3: a 404 on the task list used to give an empty, successful
    corrections file, which the merge then published as a version."""
    from hitl_plugin import steps
    from hitl_plugin.exceptions import LabelStudioError
    from hitl_plugin.labeling.client import LabelStudioClient

    rr = review_round(label_studio, images=(1,))
    other = review_round(label_studio, images=(2,))
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        with pytest.raises(LabelStudioError, match="project 987654 does not exist"):
            steps.collect(rr.rnd, client, selection=str(rr.rnd.paths.selection),
                          project_id=987654)
        with pytest.raises(LabelStudioError, match="holds none of the 1 tasks of round"):
            steps.collect(rr.rnd, client, selection=str(rr.rnd.paths.selection),
                          project_id=other.project)
    assert not rr.rnd.paths.corrections.exists()



def test_label_studio_stopped_during_a_submit_then_the_retry_creates_no_duplicates(
        label_studio):
    """Issue 13, suite item 4: the server goes down in the middle of a submit (after the
    project setup, as the import is sent); the task fails; the retry, once it is back,
    creates each task once."""
    from hitl_plugin import steps
    from hitl_plugin.exceptions import LabelStudioError
    from hitl_plugin.labeling.client import LabelStudioClient
    from hitl_plugin.model.select import batches
    from hitl_plugin.schemas import SelectionManifest, read_model, write_json_atomic

    rr = review_round(label_studio, images=(1, 2))  # a project with this round's 2 tasks
    rnd = rr.rnd.__class__(rr.rnd.config, rr.rnd.root, rr.rnd.dag_id, "manual__second")
    selection = read_model(SelectionManifest, rr.rnd.paths.selection).model_copy(
        update={"run_id": rnd.run_id})
    write_json_atomic(rnd.paths.selection, selection)
    (batch,) = batches(len(selection.items), 10, rnd.paths.selection)
    server = label_studio.server
    with LabelStudioClient(label_studio.url, label_studio.token, retries=1,
                           backoff=0.1) as client:
        real = client.import_tasks

        def import_while_the_server_goes_down(project_id, tasks):
            server.stop()
            return real(project_id, tasks)

        client.import_tasks = import_while_the_server_goes_down
        try:
            with pytest.raises(LabelStudioError):
                steps.submit(rnd, client, batch=batch)
        finally:
            server.start(timeout=240)
        client.import_tasks = real
        retry = steps.submit(rnd, client, batch=batch)
        again = steps.submit(rnd, client, batch=batch)
    assert (retry["submitted"], again["submitted"], again["already_present"]) == (2, 0, 2)
    keys = [t["data"]["hitl_key"] for t in label_studio.api(
        "GET", f"/api/tasks/?project={rr.project}&page_size=100")["tasks"]]
    assert len(keys) == len(set(keys)) == 4  # the first round's 2 and this round's 2, once
