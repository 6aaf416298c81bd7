"""The HITL view's routes: login required, the numbers shown equal the round reports, the
chart, the people table, the dataset lineage, a waiting round's live count from Label
Studio (and a message when it cannot be reached), the links, the external views, each
round's drift verdict, p-values and plot (and '–' for a round without a drift step).

Users come from Airflow's real SimpleAuthManager (role based); per-DAG access with the FAB
auth manager is in test_plugin_access.py."""

from __future__ import annotations

import html
import json
import math
import re
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

ROUTES = ("/", "/api/pipelines", "/api/rounds/hitl_shapes", "/api/datasets/shapes",
          "/api/pipelines/hitl_shapes", "/api/runs/hitl_shapes/manual__2",
          "/api/progress/hitl_shapes/manual__3", "/pipelines/hitl_shapes",
          "/runs/hitl_shapes/manual__2", "/plot/hitl_shapes/manual__2.png",
          "/drift-plot/hitl_shapes/manual__2.png", "/static/hitl_view.css")
SIGNALS = ("confidence", "box_count", "class_mix", "embedding")


@pytest.fixture
def client(root, monkeypatch):
    """The plugin app as an admin of Airflow's SimpleAuthManager sees it; no Label Studio
    connection unless a test defines one."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    from hitl_plugin.plugin import create_app

    create_auth_manager()  # the configured one (SimpleAuthManager), as the API server does
    monkeypatch.delenv("AIRFLOW_CONN_LABEL_STUDIO_DEFAULT", raising=False)
    app = create_app(root)
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="admin",
                                                                       role="admin")
    return TestClient(app)


def _ls_connection(monkeypatch, url: str, token: str = "stub-secret-token-4242") -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LABEL_STUDIO_DEFAULT", json.dumps(
        {"conn_type": "label_studio", "host": url, "password": token}))


def test_routes_require_an_airflow_user(root):
    from hitl_plugin.plugin import create_app

    client = TestClient(create_app(root))
    for path in ROUTES:
        assert client.get(path).status_code == 401, path


def test_a_viewer_reads_and_a_user_without_role_is_refused(root):
    """SimpleAuthManager grants by role: a viewer reads every DAG's rounds, no role none."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    from hitl_plugin.plugin import create_app

    create_auth_manager()
    app = create_app(root)
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="v",
                                                                       role="viewer")
    viewer = TestClient(app)
    assert viewer.get("/api/pipelines").json() == ["hitl_other", "hitl_shapes"]
    assert viewer.get("/pipelines/hitl_shapes").status_code == 200
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="n", role=None)
    nobody = TestClient(app)
    assert nobody.get("/api/pipelines").json() == []
    for path in ROUTES[2:-1]:
        assert nobody.get(path).status_code == 403, path
    assert "data-testid=\"no-pipelines\"" in nobody.get("/").text


def test_the_pipeline_page_shows_the_numbers_of_each_report(client, root, pg):
    page = client.get("/pipelines/hitl_shapes")
    assert page.status_code == 200
    shown = pg.shown(page.text)
    for run in (pg.RUN1, pg.RUN2):
        rep = json.loads((root / "rounds" / pg.DAG / _folder(run) / "report.json").read_text())
        cor = rep["corrections"]
        expect = {
            f"selected-{run}": rep["selected"], f"labeled-{run}": cor["labeled"],
            f"confirmed-{run}": cor["confirmed"], f"edited-{run}": cor["edited"],
            f"empty-{run}": cor["empty"], f"rejected-{run}": cor["rejected"],
            f"skipped-{run}": cor["skipped"], f"human-boxes-{run}": rep["human_boxes"],
            f"auto-boxes-{run}": rep["auto_accept"]["boxes"],
            f"map-before-{run}": rep["map50_95_before"],
            f"map-after-{run}": rep["map50_95_after"],
            f"new-version-{run}": rep["new_version"],
            **{f"fixed-{kind}-{run}": n for kind, n in rep["fixed"].items()},
        }
        for testid, value in expect.items():
            assert shown[testid][0] == value, testid
        assert shown[f"map-before-{run}"][1] == f"{rep['map50_95_before']:.4f}"
    assert shown[f"map-after-{pg.RUN2}"][1] == "–"  # no retrain that round
    assert shown[f"selected-{pg.RUN1}"][1] == "12"
    # the chart: one point per reported round and series, none for a missing retrain
    ids = pg.testids(page.text)
    assert "map-chart" in ids and {"map-line-before", "map-line-after"} <= ids
    assert f"map-point-before-{pg.RUN1}" in ids and f"map-point-after-{pg.RUN1}" in ids
    assert f"map-point-before-{pg.RUN2}" in ids and f"map-point-after-{pg.RUN2}" not in ids
    # rounds link to their run view and their Label Studio project (no connection: no URL)
    assert f'href="/runs/hitl_shapes/{quote(pg.RUN1, safe="")}"' in page.text
    # the other pipeline's rounds are not on this page
    assert "hitl_other" not in page.text


def test_the_people_table_and_the_lineage(client, pg):
    page = client.get("/pipelines/hitl_shapes").text
    shown = pg.shown(page)
    run = pg.RUN2  # the latest round that measured people
    for i, person in enumerate(pg.PEOPLE):
        tid = f"annotator-{run}-{i}"
        assert shown[f"{tid}-tasks"][0] == person["tasks"]
        assert shown[f"{tid}-gold-boxes"][0] == person["gold_boxes"]
        assert shown[f"{tid}-accuracy"][0] == person["accuracy"]
        assert shown[f"{tid}-precision"][0] == person["precision"]
        assert shown[f"{tid}-agreement"][0] == person["agreement"]
        assert shown[f"{tid}-median-seconds"][0] == person["median_seconds"]
    assert "0.90–0.98" in page
    assert "&lt;cid&gt;" in page and "<cid>" not in page  # escaped
    assert "yes: answers outside consensus held" in page
    # the dataset: current version and the chain of parents
    assert '<strong data-testid="dataset-latest">v0003</strong>' in page
    ids = pg.testids(page)
    assert {"lineage-v0003", "lineage-v0002", "lineage-v0001", "versions-table"} <= ids
    assert page.index("lineage-v0003") < page.index("lineage-v0002") < page.index(
        "lineage-v0001")
    assert f'href="/runs/hitl_shapes/{quote(pg.RUN2, safe="")}"' in page  # made by round 2


def test_the_run_view(client, root, pg):
    run = pg.RUN2
    page = client.get(f"/runs/hitl_shapes/{quote(run, safe='')}")
    assert page.status_code == 200
    shown = pg.shown(page.text)
    rep = json.loads((root / "rounds" / pg.DAG / run / "report.json").read_text())
    assert shown[f"selected-{run}"][0] == rep["selected"]
    assert shown[f"fixed-class_swap-{run}"][0] == rep["fixed"]["class_swap"]
    assert shown[f"fixed-total-{run}"][0] == sum(rep["fixed"].values())
    assert shown[f"auto-images-{run}"][0] == rep["auto_accept"]["images"]
    assert shown[f"base-version-{run}"][0] == "v0002"
    assert shown[f"new-version-{run}"][0] == "v0003"
    assert shown[f"annotator-{run}-1-held"][0] == 3
    assert f'data-testid="stage-{run}">reported<' in page.text
    assert 'src="/plot/hitl_shapes/manual__2.png"' in page.text
    # the run id Airflow puts in the tab's href (URL-encoded, with ':' and '+')
    first = client.get(f"/runs/hitl_shapes/{quote(pg.RUN1, safe='')}")
    assert pg.shown(first.text)[f"map-after-{pg.RUN1}"][0] == 0.47
    assert 'target="_top" href="/dags/hitl_shapes/runs/' in first.text
    assert client.get("/plot/hitl_shapes/manual__2.png").content == b"\x89PNG two"
    assert client.get(f"/plot/hitl_shapes/{_folder(pg.RUN1)}.png").content == b"\x89PNG fake"
    assert client.get("/plot/hitl_shapes/..%2F..%2Fetc.png").status_code == 404
    # a run without a round folder still answers, and says so
    none = client.get("/runs/hitl_shapes/scheduled__x")
    assert none.status_code == 200 and 'data-testid="stage-scheduled__x"' in none.text
    data = client.get(f"/api/runs/hitl_shapes/{run}").json()
    assert data["round"]["labeled"] == rep["corrections"]["labeled"]


def _drift_json(root, run: str) -> dict:
    return json.loads((root / "rounds" / "hitl_shapes" / _folder(run) / "drift.json")
                      .read_text())


def _points(page: str) -> dict[str, tuple[float, float]]:
    """The chart's points: ``{testid: (raw value, y on the chart)}``."""
    found = re.findall(r'data-testid="([^"]*-point-[^"]*)" data-value="([^"]*)" '
                       r'cx="[^"]*" cy="([^"]*)"', page)
    return {html.unescape(t): (float(v), float(y)) for t, v, y in found}


def test_the_pipeline_page_shows_each_rounds_drift(client, root, pg):
    page = client.get("/pipelines/hitl_shapes").text
    shown = pg.shown(page)
    drift = _drift_json(root, pg.RUN2)
    # the rounds table: the verdict, '–' for the round without a drift step
    assert shown[f"round-drift-{pg.RUN2}"] == ("drift", "drift detected")
    assert shown[f"round-drift-{pg.RUN1}"] == (None, "–")
    # the chart: -log10(p) per signal per round, with the verdict's threshold
    ids = pg.testids(page)
    assert {"drift-chart", "drift-threshold", *(f"drift-line-{s}" for s in SIGNALS)} <= ids
    points = _points(page)
    for signal in SIGNALS:
        assert points[f"drift-point-{signal}-{pg.RUN2}"][0] == drift["signals"][signal][
            "p_value"]
        assert f"drift-point-{signal}-{pg.RUN1}" not in points  # no drift step that round
        assert f"drift-point-{signal}-{pg.WAITING}" not in points  # too few images: untested
    # higher on the chart (smaller y) is a smaller p-value
    ys = {s: points[f"drift-point-{s}-{pg.RUN2}"][1] for s in SIGNALS}
    order = sorted(SIGNALS, key=lambda s: drift["signals"][s]["p_value"])
    assert sorted(SIGNALS, key=ys.get) == order
    # the threshold line stands where a p-value of alpha / 4 would
    line = re.search(r'data-testid="drift-threshold" points="([^"]*)"', page).group(1)
    threshold_y = {float(xy.split(",")[1]) for xy in line.split()}
    assert len(threshold_y) == 1  # one threshold for every round: a straight line
    assert math.isclose(-math.log10(0.05 / 4), _log_at(page, threshold_y.pop()), rel_tol=0.01)
    data = client.get("/api/pipelines/hitl_shapes").json()
    assert [p["verdict"] for p in data["drift"]] == [None, "drift", "too_few_images"]
    assert data["drift"][1]["threshold"] == 0.05 / 4


def _log_at(page: str, y: float) -> float:
    """The -log10(p) of the drift chart at height ``y`` (from its first and last grid
    ticks)."""
    chart = page[page.index('data-testid="drift-chart"'):]
    ticks = re.findall(r'<line class="grid" [^>]*y1="([^"]*)"[^>]*/><text class="tick" '
                       r'[^>]*>([^<]*)</text>', chart[:chart.index("</svg>")])
    (y0, v0), (y1, v1) = [(float(a), float(b)) for a, b in (ticks[0], ticks[-1])]
    return v0 + (v1 - v0) * (y - y0) / (y1 - y0)


def test_the_run_view_shows_the_drift_signals_and_plot(client, root, pg):
    run = pg.RUN2
    page = client.get(f"/runs/hitl_shapes/{run}").text
    shown = pg.shown(page)
    drift = _drift_json(root, run)
    assert shown[f"drift-verdict-{run}"] == ("drift", "drift detected")
    assert html.escape(drift["reason"]) in page
    for signal in SIGNALS:
        sig = drift["signals"][signal]
        assert shown[f"drift-test-{signal}-{run}"][0] == sig["test"]
        assert shown[f"drift-stat-{signal}-{run}"][0] == sig["statistic"]
        assert shown[f"drift-p-{signal}-{run}"] == (sig["p_value"], f"{sig['p_value']:.3g}")
    assert shown[f"drift-threshold-{run}"][0] == 0.05 / 4
    assert shown[f"drift-n-pool-{run}"][0] == drift["n_pool"]
    assert shown[f"drift-n-reference-{run}"][0] == drift["n_reference"]
    assert shown[f"drift-base-budget-{run}"][0] == pg.APPLIED["base_budget"]
    assert shown[f"drift-budget-{run}"][0] == pg.APPLIED["budget"]
    assert shown[f"drift-reserved-{run}"][0] == pg.APPLIED["reserved"]
    assert 'src="/drift-plot/hitl_shapes/manual__2.png"' in page
    assert client.get("/drift-plot/hitl_shapes/manual__2.png").content == b"\x89PNG drift"
    missing = client.get(f"/drift-plot/hitl_shapes/{_folder(pg.RUN1)}.png")
    assert missing.status_code == 404 and missing.json()["detail"] == \
        "no drift plot for this round"
    assert client.get("/drift-plot/hitl_shapes/..%2F..%2Fetc.png").status_code == 404
    assert client.get("/drift-plot/hitl_other/manual__1.png").status_code == 404
    # a round without a drift step: '–', no signals, no plot
    first = client.get(f"/runs/hitl_shapes/{quote(pg.RUN1, safe='')}").text
    assert pg.shown(first)[f"drift-verdict-{pg.RUN1}"] == (None, "–")
    assert not {t for t in pg.testids(first) if t.startswith(("drift-p-", "drift-plot-"))}
    # a round not reported yet shows its drift step's verdict (from drift.json)
    waiting = pg.shown(client.get(f"/runs/hitl_shapes/{pg.WAITING}").text)
    assert waiting[f"drift-verdict-{pg.WAITING}"] == ("too_few_images",
                                                      "not tested: too few images")
    assert waiting[f"drift-n-tested-before-{pg.WAITING}"][0] == 25  # left by earlier rounds
    assert f"drift-n-tested-before-{run}" not in shown
    data = client.get(f"/api/runs/hitl_shapes/{run}").json()["round"]["drift"]
    assert data["signals"]["embedding"]["p_value"] == drift["signals"]["embedding"]["p_value"]


def test_a_waiting_round_counts_live_in_label_studio(client, monkeypatch, stub_ls, pg):
    stub_ls.add_tasks(pg.DAG, pg.WAITING, range(8), annotated={0, 1, 2}, skipped={3})
    stub_ls.add_tasks(pg.DAG, "another_run", range(4), annotated={0, 1})
    _ls_connection(monkeypatch, stub_ls.url, stub_ls.token)
    progress = client.get(f"/api/progress/hitl_shapes/{pg.WAITING}").json()
    assert progress == {"project_id": 9, "done": 4, "total": 8, "annotated": 3, "skipped": 1,
                        "fraction": 0.5, "deadline": "2026-01-03T12:00:00+00:00"}
    for path in ("/pipelines/hitl_shapes", f"/runs/hitl_shapes/{pg.WAITING}"):
        page = client.get(path).text
        shown = pg.shown(page)
        assert shown[f"progress-done-{pg.WAITING}"][0] == 4, path
        assert shown[f"progress-total-{pg.WAITING}"][0] == 8, path
        assert 'data-testid="deadline-manual__3"' in page
        assert f'href="{stub_ls.url}/projects/9/data"' in page  # open the round's project
        assert f'data-testid="stage-{pg.WAITING}">waiting for people<' in page
    index = client.get("/").text
    assert 'data-testid="waiting-hitl_shapes"' in index
    # a round that is not waiting has no live count
    assert client.get(f"/api/progress/hitl_shapes/{pg.RUN2}").status_code == 404


def test_label_studio_unreachable_is_a_message_not_an_error(client, monkeypatch, pg):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _ls_connection(monkeypatch, f"http://127.0.0.1:{port}")
    page = client.get("/pipelines/hitl_shapes")
    assert page.status_code == 200
    assert f'data-testid="progress-error-{pg.WAITING}"' in page.text
    assert "Live progress unavailable" in page.text and "no response" in page.text
    assert "query=" not in page.text  # the reason, not the request's URL
    assert 'data-testid="deadline-manual__3"' in page.text  # the deadline still shows
    assert pg.shown(page.text)[f"selected-{pg.RUN1}"][0] == 12  # and everything else
    assert "error" in client.get(f"/api/progress/hitl_shapes/{pg.WAITING}").json()
    # no connection at all: the same message, no link
    monkeypatch.delenv("AIRFLOW_CONN_LABEL_STUDIO_DEFAULT")
    page = client.get(f"/runs/hitl_shapes/{pg.WAITING}").text
    assert f'data-testid="progress-error-{pg.WAITING}"' in page


def test_the_index_and_the_json_api(client, pg):
    page = client.get("/")
    assert page.status_code == 200
    shown = pg.shown(page.text)
    assert shown["rounds-hitl_shapes"][0] == 2
    assert shown["latest-map-before-hitl_shapes"][0] == 0.5
    assert shown["dataset-latest-hitl_shapes"][0] == "v0003"
    assert 'href="/pipelines/hitl_shapes"' in page.text
    assert client.get("/api/pipelines").json() == ["hitl_other", "hitl_shapes"]
    rounds = client.get("/api/rounds/hitl_shapes").json()
    assert [r["run_id"] for r in rounds] == [pg.RUN1, pg.RUN2]
    data = client.get("/api/pipelines/hitl_shapes").json()
    assert [p["before"] for p in data["series"]] == [0.41, 0.5]
    assert data["dataset"]["chain"] == ["v0003", "v0002", "v0001"]
    assert [r["stage"] for r in data["rounds"]] == ["reported", "reported", "labeling"]
    assert client.get("/api/datasets/shapes").json()["latest"] == "v0003"
    # a dataset no pipeline names: only for who reads every DAG (the admin), and there is none
    assert client.get("/api/datasets/nope").status_code == 404
    assert client.get("/api/datasets/orphan").json()["latest"] == "v0001"
    css = client.get("/static/hitl_view.css")
    assert css.status_code == 200 and "html.dark" in css.text
    assert client.get("/static/other.txt").status_code == 404


def test_theme_follows_the_query(client):
    assert '<html lang="en" class="dark" data-theme-fixed="1">' in client.get(
        "/pipelines/hitl_shapes?theme=dark").text
    assert '<html lang="en" class="light">' in client.get("/pipelines/hitl_shapes").text


def test_a_report_of_the_wrong_shape_is_shown_as_unreadable(client, root):
    """Issue 13, defect 11: valid JSON of the wrong shape made the page answer 500."""
    bad = root / "rounds" / "hitl_shapes" / "manual__2b"
    bad.mkdir()
    (bad / "report.json").write_text(json.dumps({"run_id": "manual__2b",
                                                 "corrections": ["not", "an", "object"]}))
    (root / "rounds" / "hitl_shapes" / "manual__4").mkdir()  # still running: no report
    page = client.get("/pipelines/hitl_shapes")
    assert page.status_code == 200
    assert "0.4100" in page.text  # the good rounds still show
    assert "report unreadable" in page.text
    assert 'data-testid="stage-manual__4">running (before labeling)<' in page.text
    rounds = client.get("/api/rounds/hitl_shapes").json()
    assert [r["run_id"] for r in rounds if "unreadable" in r] == ["manual__2b"]
    assert client.get("/").status_code == 200
    assert client.get("/runs/hitl_shapes/manual__2b").status_code == 200


def test_plugin_is_registered_by_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="airflow.plugins")}
    assert eps["hitl"] == "hitl_plugin.plugin:HitlPlugin"
    info = next(ep for ep in entry_points(group="apache_airflow_provider")
                if ep.value.startswith("hitl_plugin")).load()()
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "label_studio"
    assert conn["hook-class-name"] == "hitl_plugin.hooks.label_studio.LabelStudioHook"


def test_the_external_views_validate_as_airflow_serves_them():
    """The nav page, the DAG tab and the DAG-run tab, with the placeholders Airflow's UI
    fills ({DAG_ID}, {RUN_ID}), through Airflow's own response model."""
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from hitl_plugin.plugin import HitlPlugin

    views = {v["destination"]: ExternalViewResponse.model_validate(v)
             for v in HitlPlugin.external_views}
    assert views["nav"].href == "/hitl/" and views["nav"].url_route == "hitl"
    assert views["dag"].href == "/hitl/pipelines/{DAG_ID}"
    assert views["dag_run"].href == "/hitl/runs/{DAG_ID}/{RUN_ID}"
    assert views["dag_run"].url_route == "hitl-run"
    assert HitlPlugin.fastapi_apps[0]["url_prefix"] == "/hitl"


def _folder(run_id: str) -> str:
    from hitl_plugin.paths import safe_component

    return safe_component(run_id)


def test_config_roots_are_the_roots_the_configs_name(tmp_path):
    from hitl_plugin.plugin import config_roots

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text("dag_id: a\nstorage: {root: elsewhere}\n"
                                    "dataset: {name: cats}\n")
    (configs / "b.yaml").write_text("dag_id: b\n")  # the server's root
    (configs / "c.yaml").write_text("dag_id: [broken\n")  # reported by the DAG file
    roots = config_roots(configs)
    assert roots.by_dag == {"a": configs / "elsewhere"}
    assert roots.by_dataset == {"cats": configs / "elsewhere"}
    assert config_roots(tmp_path / "none") == ({}, {})
    # a config edited under a running server is read again
    (configs / "a.yaml").write_text("dag_id: a\nstorage: {root: moved}\ndataset: {name: cats}\n"
                                    "description: edited\n")
    assert config_roots(configs).by_dag == {"a": configs / "moved"}
