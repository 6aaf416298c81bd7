"""The Airflow plugin: a page in the Airflow UI with each pipeline's rounds and datasets.

Airflow does not authenticate plugin routes by itself, so every route depends on
Airflow's logged-in user (a Bearer token or the UI's ``_token`` cookie).
"""

from __future__ import annotations

import html
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin


def metadata_variable(key: str) -> str | None:
    """An Airflow Variable read in the API server (its metadata database and secrets
    backends; the API server runs no task, so the Task SDK's ``Variable`` is not for it)."""
    from airflow.models.variable import Variable

    return Variable.get(key, default_var=None)


def create_app(root: Path | None = None):
    """Build the plugin's FastAPI app.

    :param root: the storage root; default: resolved per request, like the tasks do (the
        Airflow Variable ``hitl_storage_root``, then ``HITL_HOME``, then ``./.hitl``).
    """
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    from hitl_plugin.config import storage_root
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.paths import Layout, safe_component
    from hitl_plugin.report import read_reports

    app = FastAPI(title="airflow-hitl", dependencies=[Depends(get_user)])

    def _root() -> Path:
        return root or storage_root(variables=metadata_variable)

    def _pipelines() -> list[str]:
        return Layout.at(_root()).pipelines()

    @app.get("/api/pipelines")
    def pipelines() -> list[str]:
        return _pipelines()

    @app.get("/api/rounds/{dag_id}")
    def rounds(dag_id: str) -> list[dict]:
        return read_reports(Layout.at(_root()), dag_id)

    @app.get("/api/datasets/{name}")
    def dataset(name: str) -> dict:
        store = DatasetStore(_root(), name)
        versions = store.versions()
        if not versions:
            raise HTTPException(404, f"no dataset {name!r}")
        return {"latest": store.latest(), "versions": [store.manifest(v) for v in versions]}

    @app.get("/plot/{dag_id}/{run_id}.png")
    def plot(dag_id: str, run_id: str):
        path = Layout.at(_root()).round(dag_id, run_id).plot
        if not path.is_file():
            raise HTTPException(404, "no plot for this round")
        return FileResponse(path, media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        parts = ["<html><head><title>HITL rounds</title></head><body><h1>HITL rounds</h1>"]
        for dag_id in _pipelines():
            parts.append(f"<h2>{html.escape(dag_id)}</h2><table border=1 cellpadding=4>")
            parts.append("<tr><th>run</th><th>selected</th><th>corrections</th>"
                         "<th>confirmed</th><th>edited</th><th>empty</th>"
                         "<th>mAP50-95 before</th><th>after</th><th>version</th><th>plot</th></tr>")
            for rep in reversed(read_reports(Layout.at(_root()), dag_id)):
                run = str(rep.get("run_id", ""))
                if "unreadable" in rep:
                    parts.append(f"<tr><td>{html.escape(run)}</td><td colspan=9>report "
                                 f"unreadable: {html.escape(rep['unreadable'])}</td></tr>")
                    continue
                link = f"plot/{safe_component(dag_id)}/{safe_component(run)}.png"
                answers = rep.get("corrections", {})
                cells = [run, rep.get("selected"), answers.get("labeled"),
                         answers.get("confirmed", ""), answers.get("edited", ""),
                         answers.get("empty", ""), rep.get("map50_95_before"),
                         rep.get("map50_95_after"), rep.get("new_version")]
                row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                parts.append(f"<tr>{row}<td><a href='{html.escape(link)}'>plot</a></td></tr>")
            parts.append("</table>")
            parts.extend(_people_table(read_reports(Layout.at(_root()), dag_id)))
        parts.append("</body></html>")
        return "".join(parts)

    return app


def _people_table(reports: list[dict]) -> list[str]:
    """The per-person table (``annotators``) of the pipeline's latest round that has one."""
    latest = next((r for r in reversed(reports) if r.get("annotators")), None)
    if latest is None:
        return []
    out = [f"<h3>People in round {html.escape(str(latest.get('run_id', '')))}</h3>"
           "<table border=1 cellpadding=4><tr><th>person</th><th>tasks</th>"
           "<th>gold boxes</th><th>accuracy</th><th>95% interval</th><th>precision</th>"
           "<th>agreement</th><th>median s/task</th><th>flagged</th></tr>"]
    for row in latest["annotators"]:
        if not isinstance(row, dict):
            continue
        ci = row.get("accuracy_ci95")
        interval = f"{ci[0]:.2f}-{ci[1]:.2f}" if isinstance(ci, list) and len(ci) == 2 else ""
        cells = [row.get("annotator"), row.get("tasks"), row.get("gold_boxes"),
                 row.get("accuracy"), interval, row.get("precision"), row.get("agreement"),
                 row.get("median_seconds"),
                 "yes: answers outside consensus held" if row.get("flagged") else "no"]
        out.append("<tr>" + "".join(f"<td>{html.escape(str('' if c is None else c))}</td>"
                                    for c in cells) + "</tr>")
    out.append("</table>")
    return out


class HitlPlugin(AirflowPlugin):
    """Adds the HITL rounds page to the Airflow UI."""

    name = "hitl"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/hitl", "name": "HITL rounds"}]
    external_views = [
        {"name": "HITL rounds", "href": "/hitl/", "destination": "nav", "category": "browse",
         "url_route": "hitl"}
    ]
