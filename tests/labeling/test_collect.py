"""Collect against hostile answers (a test double of the server: faults a real one does not
produce on demand)."""

from __future__ import annotations


class _Answers:
    """The answers of a Label Studio server, as a test double: faults only."""

    def __init__(self, tasks):
        self.tasks = tasks

    def get_project(self, project_id):
        return {"id": project_id}

    def count_tasks(self, project_id, filters):
        return len(self.tasks)

    def iter_tasks(self, project_id, filters, fields="all"):
        return iter(self.tasks)


def _selection(n: int, width: int, height: int):
    """A selection of ``n`` labeled images (ids 1..n) of one size, one class (circle)."""
    from hitl_plugin.schemas import SelectionManifest

    return SelectionManifest.model_validate({
        "dag_id": "d", "run_id": "r", "dataset": "s", "version": "v0001",
        "model_version": "m", "categories": [{"id": 1, "name": "circle"}],
        "strategy": "label_error", "budget": n, "seed": 0,
        "items": [{"image_id": i, "file_name": f"x/{i}.png", "width": width, "height": height,
                   "split": "train", "reason": "label_error", "score": 0.5}
                  for i in range(1, n + 1)]})


def test_a_task_with_a_bad_annotation_id_is_rejected_and_the_rest_collected():
    """Issue 13, defect 2: annotation ids that are not integers used to raise inside
    collect, and every retry failed the same way."""
    from hitl_plugin.labeling.collect import collect_corrections

    selection = _selection(6, 100, 80)
    box = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 10, "y": 10, "width": 20, "height": 20,
                     "rectanglelabels": ["circle"]}}
    bad_ids = ["abc", {}, "1.5", "9" * 5000, None]
    tasks = [{"id": 10 + i, "data": {"hitl_image_id": i, "hitl_key": f"d|r|{i}"},
              "annotations": [{"id": bad_ids[i - 1], "result": [box]}]} for i in range(1, 6)]
    tasks.append({"id": 16, "data": {"hitl_image_id": 6, "hitl_key": "d|r|6"},
                  "annotations": [{"id": 7, "result": [box], "updated_at": "2026"}]})

    result = collect_corrections(_Answers(tasks), project_id=1, dag_id="d", run_id="r",
                                 selection=selection)
    assert [c.image_id for c in result.items] == [6]
    assert sorted(r.image_id for r in result.rejected) == [1, 2, 3, 4, 5]
    assert all("annotation id is not an integer" in r.reason for r in result.rejected)


def test_regions_are_not_accepted_too_easily():
    """Issue 13, defect 7: another object's regions, 5,000 boxes, exact duplicates, stray
    sub-pixel boxes and unbounded provenance texts were accepted as they came."""
    from hitl_plugin.labeling.collect import MAX_REGIONS, collect_corrections

    selection = _selection(4, 160, 160)

    def box(x=10, w=20, **kw):
        return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", **kw,
                "value": {"x": x, "y": 10, "width": w, "height": 20,
                          "rectanglelabels": ["circle"]}}

    answers = {
        1: [box(to_name="other_image")],
        2: [box(x=i % 90, w=1) for i in range(MAX_REGIONS + 1)],
        3: [box(), box(), box(x=50, w=0.2)],  # a duplicate, and a 0.3 px click
        4: [box()],
    }
    tasks = [{"id": 10 + i, "data": {"hitl_image_id": i, "hitl_key": f"d|r|{i}"},
              "annotations": [{"id": i, "result": result, "updated_at": "2026-" + "9" * 500}]}
             for i, result in answers.items()]

    result = collect_corrections(_Answers(tasks), project_id=1, dag_id="d", run_id="r",
                                 selection=selection)
    reasons = {r.image_id: r.reason for r in result.rejected}
    assert "unknown object 'other_image'" in reasons[1]
    assert f"more than the {MAX_REGIONS}" in reasons[2]
    by_image = {c.image_id: c for c in result.items}
    assert len(by_image[3].boxes) == 1 and len(by_image[3].dropped) == 2
    assert "exact duplicate" in by_image[3].dropped[0]
    assert "below 1 px: dropped" in by_image[3].dropped[1]
    assert len(by_image[4].time) == 64
