from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from hitl_plugin.dataset.store import DatasetStore


@pytest.fixture
def root(tmp_path):
    rounds = tmp_path / "rounds" / "hitl_shapes" / "manual__1"
    rounds.mkdir(parents=True)
    (rounds / "report.json").write_text(json.dumps({
        "run_id": "manual__1", "selected": 12,
        "corrections": {"labeled": 11, "confirmed": 4, "edited": 7, "empty": 1},
        "map50_95_before": 0.41, "map50_95_after": 0.47, "new_version": "v0002",
        "finished": "2026-01-01T00:00:00+00:00",
        "annotators": [{"annotator": "ana@people.local", "tasks": 9, "gold_boxes": 120,
                        "accuracy": 0.95, "accuracy_ci95": [0.9, 0.98], "precision": 0.97,
                        "agreement": 0.93, "median_seconds": 8.5, "flagged": False},
                       {"annotator": "<cid>", "tasks": 8, "gold_boxes": 110,
                        "accuracy": 0.61, "accuracy_ci95": [0.52, 0.7], "precision": 0.66,
                        "agreement": 0.7, "median_seconds": 9.0, "flagged": True}],
    }))
    (rounds / "report.png").write_bytes(b"\x89PNG fake")
    DatasetStore(tmp_path, "shapes").publish(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}, parent=None)
    return tmp_path


def test_routes_require_an_airflow_user(root):
    from hitl_plugin.plugin import create_app

    client = TestClient(create_app(root))
    for path in ("/", "/api/pipelines", "/api/rounds/hitl_shapes", "/api/datasets/shapes",
                 "/plot/hitl_shapes/manual__1.png"):
        assert client.get(path).status_code == 401, path


def test_routes_with_a_user(root):
    from airflow.api_fastapi.core_api.security import get_user

    from hitl_plugin.plugin import create_app

    app = create_app(root)
    app.dependency_overrides[get_user] = lambda: object()
    client = TestClient(app)
    assert client.get("/api/pipelines").json() == ["hitl_shapes"]
    assert client.get("/api/rounds/hitl_shapes").json()[0]["map50_95_after"] == 0.47
    assert client.get("/api/datasets/shapes").json()["latest"] == "v0001"
    assert client.get("/api/datasets/nope").status_code == 404
    page = client.get("/").text
    assert "manual__1" in page and "0.47" in page and "plot/hitl_shapes/manual__1.png" in page
    assert "<th>confirmed</th><th>edited</th><th>empty</th>" in page
    assert "<td>4</td><td>7</td><td>1</td>" in page
    # the per-person table of the round, escaped
    assert "People in round manual__1" in page
    assert "<td>ana@people.local</td><td>9</td><td>120</td><td>0.95</td><td>0.90-0.98</td>" in page
    assert "<td>&lt;cid&gt;</td>" in page and "yes: answers outside consensus held" in page
    assert client.get("/plot/hitl_shapes/manual__1.png").content == b"\x89PNG fake"
    assert client.get("/plot/hitl_shapes/..%2F..%2Fetc.png").status_code == 404


def test_plugin_is_registered_by_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="airflow.plugins")}
    assert eps["hitl"] == "hitl_plugin.plugin:HitlPlugin"
    info = next(ep for ep in entry_points(group="apache_airflow_provider")
                if ep.value.startswith("hitl_plugin")).load()()
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "label_studio"
    assert conn["hook-class-name"] == "hitl_plugin.hooks.label_studio.LabelStudioHook"


def test_a_report_of_the_wrong_shape_is_shown_as_unreadable(root):
    """Issue 13, defect 11: valid JSON of the wrong shape made the page answer 500."""
    from airflow.api_fastapi.core_api.security import get_user

    from hitl_plugin.plugin import create_app

    bad = root / "rounds" / "hitl_shapes" / "manual__2"
    bad.mkdir()
    (bad / "report.json").write_text(json.dumps({"run_id": "manual__2",
                                                 "corrections": ["not", "an", "object"]}))
    (root / "rounds" / "hitl_shapes" / "manual__3").mkdir()  # still running: no report
    app = create_app(root)
    app.dependency_overrides[get_user] = lambda: object()
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200
    assert "manual__1" in page.text and "0.47" in page.text  # the good round still shows
    assert "manual__2</td><td colspan=9>report unreadable" in page.text
    rounds = client.get("/api/rounds/hitl_shapes").json()
    assert [r["run_id"] for r in rounds if "unreadable" in r] == ["manual__2"]
