"""The Airflow plugin: the HITL view inside Airflow's UI.

**Mechanism.** A FastAPI app mounted in Airflow's API server at ``/hitl`` (``fastapi_apps``)
serves server-drawn pages styled like Airflow 3's UI (its colours, its font stack, light and
dark following the framing page: :mod:`hitl_plugin.dashboard_html`), and Airflow shows them
as ``external_views``: a nav entry (Browse → HITL rounds), a tab on each DAG
(``destination: dag``) and a tab on each DAG run (``destination: dag_run``, href template
``{DAG_ID}``/``{RUN_ID}``, which Airflow's UI fills in URL-encoded).

Why not a ``react_apps`` bundle: Airflow 3.3's UI does load an ES module and renders the
component it leaves on ``globalThis`` with the host's React, but a component that looks
like Airflow needs its Chakra UI, which the host exposes only as undocumented globals
(``globalThis.ChakraUI``); without a JS toolchain that would be hand-written
``React.createElement`` code that nothing here can test but a browser. Server-drawn pages
are tested in-process (every number the page shows is checked against the report), need no
build step and no network, and still look like Airflow. The API routes under ``/hitl/api``
return the same data as JSON.

**Access.** Airflow does not authenticate plugin routes by itself. Every route depends on
Airflow's user (a Bearer token or the UI's ``_token`` cookie: 401 without) and checks the
auth manager, the way Airflow's own DAG-run routes do:
``is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
details=DagDetails(id=dag_id, team_name=...))`` (403 otherwise). A round is a DAG run, so
reading it needs what reading the DAG's runs needs. The index and ``/api/pipelines`` list
only the pipelines that pass. A dataset may be read by whoever may read the runs of a
pipeline that uses it (named by its round reports, or by the ``round_key`` of a version it
merged); a dataset no pipeline names needs read access to all DAGs.

**Label Studio.** A round that waits for people shows a live count (done of total, the
wait's own count) from Label Studio, through :class:`~hitl_plugin.hooks.label_studio.
LabelStudioHook` on the connection named by the Airflow Variable
``hitl_label_studio_conn_id`` (default ``label_studio_default``, as the DAGs use); when
Label Studio cannot be reached the page says so and still shows everything else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from airflow.plugins_manager import AirflowPlugin
from fastapi import Request  # in the module's globals: FastAPI resolves the routes' annotations

log = logging.getLogger(__name__)

#: Where Airflow's UI mounts the plugin app.
URL_PREFIX = "/hitl"
#: The external views' ``url_route``s: ``/plugin/hitl``, ``/dags/<dag>/plugin/hitl-dag``,
#: ``/dags/<dag>/runs/<run>/plugin/hitl-run`` in Airflow's UI.
NAV_ROUTE, DAG_ROUTE, RUN_ROUTE = "hitl", "hitl-dag", "hitl-run"
#: Seconds one Label Studio call of a page may take (the page waits for it).
LS_TIMEOUT = 5.0


def metadata_variable(key: str) -> str | None:
    """An Airflow Variable read in the API server (its metadata database and secrets
    backends; the API server runs no task, so the Task SDK's ``Variable`` is not for it)."""
    from airflow.models.variable import Variable

    return Variable.get(key, default_var=None)


def label_studio_conn_id() -> str:
    """The Label Studio connection of the rounds (the DAGs' own default)."""
    try:
        return metadata_variable("hitl_label_studio_conn_id") or "label_studio_default"
    except Exception:  # no metadata database (a bare test app): the default
        return "label_studio_default"


def label_studio_url(conn_id: str) -> str | None:
    """The Label Studio URL of a connection, or None when it cannot be read."""
    from hitl_plugin.hooks.label_studio import LabelStudioHook, _url

    try:
        return _url(LabelStudioHook.get_connection(conn_id))
    except Exception as exc:  # a missing or broken connection hides the links, nothing else
        log.info("No Label Studio URL from connection %r: %s", conn_id, exc)
        return None


def live_progress(plan: dict, conn_id: str) -> dict:
    """A waiting round's count from Label Studio, or ``{"error": reason}``."""
    from hitl_plugin.dashboard import progress
    from hitl_plugin.hooks.label_studio import LabelStudioHook

    try:
        with LabelStudioHook(conn_id, timeout=LS_TIMEOUT, retries=0).get_client() as client:
            return progress(client, plan)
    except Exception as exc:  # fail soft: the page says why and shows the rest
        return {"error": f"Label Studio could not be counted ({_why(exc)})",
                "deadline": plan.get("deadline"), "project_id": plan.get("project_id")}


def _why(exc: Exception) -> str:
    """A failed count, short (the status, the reason without the request's URL)."""
    from hitl_plugin.exceptions import LabelStudioError

    if isinstance(exc, LabelStudioError):
        code = "no response" if exc.status is None else f"HTTP {exc.status}"
        return f"{code}: {exc.reason.split(' with url:')[0][:160]}"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def is_authorized_run_read(user: Any, dag_id: str | None) -> bool:
    """Whether ``user`` may read the runs of ``dag_id`` (of every DAG for None), as the
    auth manager decides for Airflow's own DAG-run routes."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.configuration import conf

    if not dag_id:  # every DAG: the DAGs themselves, not some DAG's runs
        return get_auth_manager().is_authorized_dag(method="GET", user=user)
    team = None
    if conf.getboolean("core", "multi_team", fallback=False):
        from airflow.models.dag import DagModel

        team = DagModel.get_team_name(dag_id)
    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id, team_name=team), user=user)


class PipelineRoots(NamedTuple):
    """The storage roots that pipeline configs name (``storage.root``)."""

    by_dag: dict[str, Path]
    by_dataset: dict[str, Path]


#: The last answer of :func:`config_roots`, with the folder and file stats it was read from.
_roots_cache: dict[str, Any] = {}


def config_roots(config_dir: Path | None = None) -> PipelineRoots:
    """The storage roots named by the pipeline configs the DAG file reads
    (``<dags_folder>/configs/*.yaml``): a pipeline without ``storage.root`` is left out (it
    uses the server's root). Unreadable configs are skipped: the DAG file reports them."""
    from hitl_plugin.config import check_configs

    if config_dir is None:
        from airflow.configuration import conf

        config_dir = Path(conf.get("core", "dags_folder")) / "configs"
    paths = sorted(config_dir.glob("*.y*ml")) if config_dir.is_dir() else []
    # every route asks, several times a page: validate the configs again only when one changed
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    if _roots_cache.get("key") == (config_dir, key):
        return _roots_cache["roots"]
    configs, _ = check_configs(paths)
    roots = PipelineRoots({}, {})
    for config in configs.values():
        if config.storage.root:
            where = config.resolve(config.storage.root)
            roots.by_dag[config.dag_id] = where
            roots.by_dataset.setdefault(config.dataset.name, where)
    _roots_cache.update(key=(config_dir, key), roots=roots)
    return roots


def create_app(root: Path | None = None):
    """Build the plugin's FastAPI app.

    :param root: the one storage root; default: resolved per request, like the tasks do:
        a pipeline's config's ``storage.root`` (:func:`config_roots`), else the Airflow
        Variable ``hitl_storage_root``, then ``HITL_HOME``, then ``./.hitl``.
    """
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    from hitl_plugin import dashboard
    from hitl_plugin import dashboard_html as views
    from hitl_plugin.config import storage_root
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.paths import Layout
    from hitl_plugin.report import read_reports

    app = FastAPI(title="airflow-hitl", dependencies=[Depends(get_user)])
    assets = Path(__file__).resolve().parent / "assets"

    def _default_root() -> Path:
        return root or storage_root(variables=metadata_variable)

    def _roots() -> PipelineRoots:
        # an explicit root (the tests' apps) is the only one; else the configs may name theirs
        return PipelineRoots({}, {}) if root is not None else config_roots()

    def _layout(dag_id: str | None = None) -> Layout:
        """The storage root of a pipeline: its config's ``storage.root``, else the server's."""
        return Layout.at(_roots().by_dag.get(dag_id) or _default_root())

    def _dataset_root(name: str) -> Path:
        return _roots().by_dataset.get(name) or _default_root()

    def _pipelines() -> list[str]:
        """Every pipeline with rounds, in the server's root or in the root its config names."""
        roots = _roots()
        found = {d for d in Layout.at(_default_root()).pipelines() if d not in roots.by_dag}
        for dag_id, where in roots.by_dag.items():
            if dag_id in Layout.at(where).pipelines():
                found.add(dag_id)
        return sorted(found)

    def _base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def _airflow(request: Request) -> str:
        """Airflow's UI root: the plugin's mount point less its own prefix."""
        base = _base(request)
        if base.endswith(URL_PREFIX):
            return base[: -len(URL_PREFIX)]
        from hitl_plugin.operators.links import airflow_ui_base

        return airflow_ui_base()

    def _theme(request: Request) -> str | None:
        theme = request.query_params.get("theme")
        return theme if theme in ("light", "dark") else None

    def _readable(user: Any) -> list[str]:
        return [d for d in _pipelines() if is_authorized_run_read(user, d)]

    def _check(user: Any, dag_id: str) -> None:
        if not is_authorized_run_read(user, dag_id):
            raise HTTPException(403, f"Forbidden: you may not read the runs of DAG {dag_id!r}")

    def _check_dataset(user: Any, name: str) -> None:
        users = [d for d, names in dashboard.datasets_by_pipeline(
                     Layout.at(_dataset_root(name))).items()
                 if name in names]
        if any(is_authorized_run_read(user, d) for d in users):
            return
        if not users and is_authorized_run_read(user, None):
            return
        raise HTTPException(403, f"Forbidden: no pipeline you may read uses dataset {name!r}")

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException):
        if request.url.path.startswith(f"{_base(request)}/api/") or any(
                part in request.url.path for part in ("/plot/", "/drift-plot/", "/static/")):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        return HTMLResponse(views.error_page(exc.status_code, str(exc.detail),
                                             base=_base(request), theme=_theme(request)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # -- JSON ---------------------------------------------------------------------------------

    @app.get("/api/pipelines")
    def pipelines(user=Depends(get_user)) -> list[str]:
        """The pipelines (DAG ids with round folders) whose runs the user may read."""
        return _readable(user)

    @app.get("/api/rounds/{dag_id}")
    def rounds(dag_id: str, user=Depends(get_user)) -> list[dict]:
        """The pipeline's round reports, as written."""
        _check(user, dag_id)
        return read_reports(_layout(dag_id), dag_id)

    @app.get("/api/pipelines/{dag_id}")
    def pipeline_data(dag_id: str, user=Depends(get_user)) -> dict:
        """What the pipeline dashboard shows."""
        _check(user, dag_id)
        return dashboard.pipeline_view(_layout(dag_id), dag_id)

    @app.get("/api/runs/{dag_id}/{run_id:path}")
    def run_data(dag_id: str, run_id: str, user=Depends(get_user)) -> dict:
        """What the run view shows."""
        _check(user, dag_id)
        return dashboard.run_view(_layout(dag_id), dag_id, run_id)

    @app.get("/api/progress/{dag_id}/{run_id:path}")
    def progress_data(dag_id: str, run_id: str, user=Depends(get_user)) -> dict:
        """A waiting round's live count from Label Studio (``{"error"}`` when it cannot be
        reached; 404 when the round is not waiting)."""
        _check(user, dag_id)
        plan = dashboard.waiting_plan(_layout(dag_id), dag_id, run_id)
        if plan is None:
            raise HTTPException(404, "this round is not waiting for people")
        return live_progress(plan, label_studio_conn_id())

    @app.get("/api/datasets/{name}")
    def dataset(name: str, user=Depends(get_user)) -> dict:
        _check_dataset(user, name)
        store = DatasetStore(_dataset_root(name), name)
        versions = store.versions()
        if not versions:
            raise HTTPException(404, f"no dataset {name!r}")
        return {"latest": store.latest(), "versions": [store.manifest(v) for v in versions],
                "lineage": dashboard.lineage(_dataset_root(name), name)}

    def _round_png(user: Any, dag_id: str, run_id: str, which: str) -> FileResponse:
        """A plot of the round (``which``: its :class:`RoundPaths` name), for who may read
        the DAG's runs."""
        _check(user, dag_id)
        path = getattr(_layout(dag_id).round(dag_id, run_id), which)
        if not path.is_file():
            raise HTTPException(404, f"no {which.replace('_', ' ')} for this round")
        return FileResponse(path, media_type="image/png")

    @app.get("/plot/{dag_id}/{run_id}.png")
    def plot(dag_id: str, run_id: str, user=Depends(get_user)):
        return _round_png(user, dag_id, run_id, "plot")

    @app.get("/drift-plot/{dag_id}/{run_id}.png")
    def drift_plot(dag_id: str, run_id: str, user=Depends(get_user)):
        """The round's drift plot (``drift.png``, written by the report step)."""
        return _round_png(user, dag_id, run_id, "drift_plot")

    @app.get("/static/{name}")
    def static(name: str):
        if name not in ("hitl_view.css", "hitl_view.js"):
            raise HTTPException(404, "no such file")
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return FileResponse(assets / name, media_type=media,
                            headers={"Cache-Control": "private, max-age=300"})

    # -- pages --------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user=Depends(get_user)) -> str:
        summaries = []
        for dag_id in _readable(user):
            layout = _layout(dag_id)
            reports = [r for r in read_reports(layout, dag_id) if "unreadable" not in r]
            name = dashboard.pipeline_dataset(layout, dag_id, reports)
            latest = None
            if name:
                try:
                    latest = DatasetStore(layout.root, name).latest()
                except Exception:  # shown as unknown; the pipeline page says why
                    latest = None
            last = reports[-1] if reports else {}
            summaries.append({
                "dag_id": dag_id, "rounds": len(reports), "dataset": name, "latest": latest,
                "last": {"before": last.get("map50_95_before"),
                         "after": last.get("map50_95_after")},
                "waiting": sum(1 for p in layout.rounds(dag_id)
                               if dashboard.stage(p) == "labeling")})
        return views.index_page(summaries, base=_base(request), theme=_theme(request))

    @app.get("/pipelines/{dag_id}", response_class=HTMLResponse)
    def pipeline_page(dag_id: str, request: Request, user=Depends(get_user)) -> str:
        _check(user, dag_id)
        layout = _layout(dag_id)
        view = dashboard.pipeline_view(layout, dag_id)
        conn_id = label_studio_conn_id()
        live = {}
        for row in view["rounds"]:
            if row["stage"] == "labeling":
                plan = dashboard.waiting_plan(layout, dag_id, row["run_id"])
                live[row["run_id"]] = live_progress(plan, conn_id) if plan else None
        return views.pipeline_page(view, base=_base(request), airflow=_airflow(request),
                                   ls_url=label_studio_url(conn_id), progress=live,
                                   theme=_theme(request))

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse)
    def run_page(dag_id: str, run_id: str, request: Request, user=Depends(get_user)) -> str:
        _check(user, dag_id)
        layout = _layout(dag_id)
        view = dashboard.run_view(layout, dag_id, run_id)
        conn_id = label_studio_conn_id()
        live = None
        if view["round"]["stage"] == "labeling":
            plan = dashboard.waiting_plan(layout, dag_id, run_id)
            live = live_progress(plan, conn_id) if plan else None
        return views.run_page(view, base=_base(request), airflow=_airflow(request),
                              ls_url=label_studio_url(conn_id), progress=live,
                              theme=_theme(request))

    return app


class HitlPlugin(AirflowPlugin):
    """Adds the HITL view to the Airflow UI: a nav page, a DAG tab, a DAG-run tab."""

    name = "hitl"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "HITL rounds"}]
    external_views = [
        {"name": "HITL rounds", "href": f"{URL_PREFIX}/", "destination": "nav",
         "category": "browse", "url_route": NAV_ROUTE},
        {"name": "HITL rounds", "href": f"{URL_PREFIX}/pipelines/{{DAG_ID}}",
         "destination": "dag", "url_route": DAG_ROUTE},
        {"name": "HITL round", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
         "destination": "dag_run", "url_route": RUN_ROUTE},
    ]
