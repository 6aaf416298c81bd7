"""Airflow hook for Label Studio: builds the plain-Python clients from a Connection.

The connection type ``label_studio`` keeps the URL in ``host`` and the API token in
``password`` (see :mod:`hitl_plugin.provider`), and these optional extras:

- ``token_type``: ``legacy``, ``personal`` (a personal access token) or ``auto`` (the
  default: told apart by the token's form, see :func:`hitl_plugin.labeling.client.token_kind`);
- ``ca_bundle``: the CA file of a server with its own TLS certificate (every call, the token
  refresh included);
- ``image_url_prefix``: where that Label Studio reads our images, for one that cannot read the
  storage root through local-files serving (another host): a task's image is the prefix
  followed by the image's quoted file name, e.g. ``https://files.example.com/hitl/images/``;
  without it, local-files URLs (``/data/local-files/?d=images/<file>``).
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
    path = _extra_value(extra, "ca_bundle")
    if not path:
        return None
    if not isinstance(path, str) or not Path(path).is_file():
        raise ValueError(f"Connection {conn_id!r}: extra ca_bundle {path!r} is not a file")
    return path


def _extra_value(extra: dict, name: str) -> Any:
    """An extra by its name (or by the ``extra__label_studio__`` name of older forms)."""
    extra = extra or {}
    value = extra.get(name)
    return extra.get(f"extra__label_studio__{name}") if value in (None, "") else value


def _token_type(extra: dict, conn_id: str) -> str:
    """The connection's extra ``token_type`` (default ``auto``)."""
    from hitl_plugin.labeling.client import TOKEN_TYPES

    value = _extra_value(extra, "token_type")
    if value in (None, ""):
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in TOKEN_TYPES:
        raise ValueError(f"Connection {conn_id!r}: extra token_type must be one of "
                         f"{', '.join(TOKEN_TYPES)}; got {value!r}")
    return value.strip().lower()


def _image_url_prefix(extra: dict, conn_id: str) -> str | None:
    """The connection's extra ``image_url_prefix``: an ``http(s)://`` URL or an absolute
    path on the Label Studio host (``/...``), or None."""
    value = _extra_value(extra, "image_url_prefix")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.strip().startswith(("http://", "https://",
                                                                   "/")):
        raise ValueError(f"Connection {conn_id!r}: extra image_url_prefix must be an "
                         f"http(s):// URL or a path starting with '/'; got {value!r}")
    return value.strip()


def _client_options(conn: Connection, extra: dict) -> dict[str, Any]:
    """The client's keyword arguments that come from the connection (besides URL, token)."""
    return {"ca_bundle": _ca_bundle(extra, conn.conn_id),
            "token_type": _token_type(extra, conn.conn_id),
            "image_url_prefix": _image_url_prefix(extra, conn.conn_id),
            "conn_id": conn.conn_id}


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
                                 **_client_options(conn, conn.extra_dejson))

    async def aget_client(self) -> AsyncLabelStudioClient:
        """An asynchronous client for triggers (reads the connection without blocking)."""
        from hitl_plugin.labeling.client import AsyncLabelStudioClient

        conn = await BaseHook.aget_connection(self.label_studio_conn_id)
        extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else \
            conn.extra_dejson
        return AsyncLabelStudioClient(_url(conn), _token(conn), timeout=self.timeout,
                                      retries=self.retries, **_client_options(conn, extra))

    def test_connection(self) -> tuple[bool, str]:
        """Check the URL and the token with ``GET /api/current-user/whoami`` (a personal
        access token is exchanged for an access token first)."""
        from hitl_plugin.exceptions import LabelStudioError

        try:
            with self.get_client() as client:
                client.retries = 0
                user = client.whoami() or {}
                kind = client.token_type
        except (LabelStudioError, ValueError) as exc:
            return False, str(exc)
        what = "personal access token" if kind == "personal" else "legacy token"
        return True, f"Connected to Label Studio as user {user.get('id', '?')} ({what})"
