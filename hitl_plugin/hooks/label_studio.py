"""Airflow hook for Label Studio: builds the plain-Python clients from a Connection.

The connection type ``label_studio`` keeps the URL in ``host`` and the API token in
``password`` (see :mod:`hitl_plugin.provider`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from hitl_plugin.labeling.client import AsyncLabelStudioClient, LabelStudioClient


def _url(conn: Connection) -> str:
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"Connection {conn.conn_id!r} has no host (the Label Studio URL)")
    if "://" not in host:
        scheme = conn.schema or "http"
        host = f"{scheme}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
    return host.rstrip("/")


def _token(conn: Connection) -> str:
    if not conn.password:
        raise ValueError(f"Connection {conn.conn_id!r} has no password (the API token)")
    return conn.password


def _ca_bundle(extra: dict, conn_id: str) -> str | None:
    """The connection's extra ``ca_bundle``: the CA file of a server with its own certificate."""
    path = (extra or {}).get("ca_bundle")
    if not path:
        return None
    if not isinstance(path, str) or not Path(path).is_file():
        raise ValueError(f"Connection {conn_id!r}: extra ca_bundle {path!r} is not a file")
    return path


class LabelStudioHook(BaseHook):
    """Talk to Label Studio through an Airflow Connection.

    :param label_studio_conn_id: the connection (type ``label_studio``).
    :param timeout: seconds per HTTP call.
    :param retries: retries per call (see :mod:`hitl_plugin.labeling.client`).
    """

    conn_name_attr = "label_studio_conn_id"
    default_conn_name = "label_studio_default"
    conn_type = "label_studio"
    hook_name = "Label Studio"

    def __init__(self, label_studio_conn_id: str = default_conn_name, *, timeout: float = 30.0,
                 retries: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_studio_conn_id = label_studio_conn_id
        self.timeout = timeout
        self.retries = retries

    def get_client(self) -> LabelStudioClient:
        """A synchronous client for tasks."""
        from hitl_plugin.labeling.client import LabelStudioClient

        conn = self.get_connection(self.label_studio_conn_id)
        return LabelStudioClient(_url(conn), _token(conn), timeout=self.timeout,
                                 retries=self.retries,
                                 ca_bundle=_ca_bundle(conn.extra_dejson, conn.conn_id))

    async def aget_client(self) -> AsyncLabelStudioClient:
        """An asynchronous client for triggers (reads the connection without blocking)."""
        from hitl_plugin.labeling.client import AsyncLabelStudioClient

        conn = await BaseHook.aget_connection(self.label_studio_conn_id)
        extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else \
            conn.extra_dejson
        return AsyncLabelStudioClient(_url(conn), _token(conn), timeout=self.timeout,
                                      retries=self.retries,
                                      ca_bundle=_ca_bundle(extra, conn.conn_id))

    def test_connection(self) -> tuple[bool, str]:
        """Check the URL and the token with ``GET /api/current-user/whoami``."""
        from hitl_plugin.exceptions import LabelStudioError

        try:
            with self.get_client() as client:
                client.retries = 0
                user = client.whoami() or {}
        except (LabelStudioError, ValueError) as exc:
            return False, str(exc)
        return True, f"Connected to Label Studio as user {user.get('id', '?')}"
