"""Operator extra links: from a task in Airflow's UI to its round and its Label Studio project.

Airflow 3 computes an extra link in the task's own process when the task ends (or defers)
and keeps the URL as an XCom that the UI reads; nothing here runs in the API server.

- :class:`RoundReportLink` ("Round report", on the merge and report steps): the DAG run's
  HITL tab in Airflow's UI (``/dags/<dag>/runs/<run>/plugin/hitl-run``), which frames the
  plugin's run view.
- :class:`LabelStudioProjectLink` ("Open in Label Studio", on the submit and wait steps):
  the round's project in Label Studio (``<Label Studio URL>/projects/<id>/data``), the URL
  taken from the task's Label Studio connection, the project from the task's result.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

#: The DAG-run tab of the plugin (``url_route`` of its ``dag_run`` external view).
RUN_ROUTE = "hitl-run"


def airflow_ui_base() -> str:
    """The path Airflow's UI is served under ('' at the root; ``[api] base_url``'s path)."""
    from airflow.configuration import conf

    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def round_view_url(dag_id: str, run_id: str, base: str | None = None) -> str:
    """The DAG run's HITL tab in Airflow's UI (same origin: the UI opens it in place)."""
    base = airflow_ui_base() if base is None else base.rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/{RUN_ROUTE}"


def _project_of(value: Any) -> int | None:
    if isinstance(value, dict) and value.get("project_id") not in (None, ""):
        try:
            return int(value["project_id"])
        except (TypeError, ValueError):
            return None
    return None


def task_project_id(operator: Any, ti_key: Any) -> int | None:
    """The Label Studio project of a submit or wait task.

    In order: the wait's plan (the sensor defers with it), the task's result XCom (a submit
    batch's or a finished wait's ``project_id``), the task's own ``project_id`` argument,
    its rendered ``submissions``.
    """
    found = _project_of(getattr(operator, "_plan", None))
    if found is not None:
        return found
    try:
        from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

        found = _project_of(XCom.get_value(ti_key=ti_key, key="return_value"))
    except Exception as exc:  # no XCom reachable (e.g. outside a task): look further
        log.debug("No result XCom for the Label Studio link: %s", exc)
    if found is not None:
        return found
    given = getattr(operator, "project_id", None)
    if isinstance(given, int) or (isinstance(given, str) and given.strip().isdigit()):
        return int(given)
    subs = getattr(operator, "submissions", None)
    if isinstance(subs, (list, tuple)):
        ids = {p for p in (_project_of(s) for s in subs) if p is not None}
        if len(ids) == 1:
            return ids.pop()
    return None


class RoundReportLink(BaseOperatorLink):
    """"Round report": the DAG run's HITL tab (the round's numbers, people, lineage)."""

    name = "Round report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return round_view_url(ti_key.dag_id, ti_key.run_id)


class LabelStudioProjectLink(BaseOperatorLink):
    """"Open in Label Studio": the round's Label Studio project ('' before it exists)."""

    name = "Open in Label Studio"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from hitl_plugin.hooks.label_studio import LabelStudioHook, _url

        project = task_project_id(operator, ti_key)
        if project is None:
            return ""
        conn_id = getattr(operator, "label_studio_conn_id", None) or "label_studio_default"
        try:
            ls_url = _url(LabelStudioHook.get_connection(conn_id))
        except Exception as exc:  # a link is never worth failing a task for
            log.warning("No Label Studio link: connection %r unreadable (%s)", conn_id, exc)
            return ""
        from hitl_plugin.labeling.tasks import project_url

        return project_url(ls_url, project)
