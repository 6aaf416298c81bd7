"""HTTP clients for the Label Studio REST API (plain Python, no Airflow).

:class:`LabelStudioClient` (requests) runs in tasks; :class:`AsyncLabelStudioClient` (httpx)
runs in the triggerer's event loop. Both follow one retry rule (:func:`retryable`):

- 429, 502, 503, 504 and failures to connect are retried with bounded exponential backoff:
  the server did not act on the request;
- other 5xx, read timeouts and connections dropped after the request was sent are retried
  only for idempotent methods (GET, PUT, PATCH, DELETE, HEAD). A POST that may have reached
  the server is NOT repeated blindly: the caller re-reads the server state first (see
  :func:`hitl_plugin.labeling.submit.submit_batch`), which keeps imports free of duplicates.

Two kinds of API token (the connection's extra ``token_type``, see :func:`token_kind`):

- a legacy token, sent as ``Authorization: Token <key>``;
- a personal access token (Label Studio's default for new organisations): a JWT refresh token,
  exchanged for a short-lived access token (``POST /api/token/refresh/``, five minutes in
  Label Studio 1.23) sent as ``Authorization: Bearer <access>``. A new one is fetched shortly
  before the current one expires (its ``exp`` claim) and once after a 401.

A 401 that stays (after that one renewal) is a configuration error,
:class:`~hitl_plugin.exceptions.LabelStudioAuthError`, whose message names the server, the
connection, the token type and what to check. The tokens are sent in a header and never
appear in a log line, an exception message or a ``repr``: every text that leaves this module
goes through :func:`scrub`, which removes the API token and the current access token.

Task queries use Label Studio's server-side filters (``query={"filters": ...}``) and read the
count from the response's ``total``, so a count never downloads the tasks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import requests

from hitl_plugin.exceptions import RETRY_ALWAYS, LabelStudioAuthError, LabelStudioError

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Data keys our tasks carry (see :mod:`hitl_plugin.labeling.tasks`).
KEY_FIELD = "hitl_key"


def scrub(text: str, *secrets: str | None, limit: int | None = 300) -> str:
    """Replace every occurrence of each secret in ``text`` (and cut texts over ``limit``).

    A JWT's signature (its last part, what makes it usable) is removed even where the rest of
    the token is not quoted whole.
    """
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "***")
        signature = secret.rsplit(".", 1)[-1] if secret.count(".") == 2 else ""
        if len(signature) >= 16:
            text = text.replace(signature, "***")
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


#: Values of the connection's extra ``token_type``.
TOKEN_TYPES = ("legacy", "personal", "auto")
#: Label Studio's endpoint that exchanges a personal access token for an access token.
REFRESH_PATH = "/api/token/refresh/"
#: Seconds before an access token's expiry at which a new one is fetched (Label Studio's
#: access tokens live five minutes); at most a quarter of the token's lifetime.
REFRESH_MARGIN_S = 30.0
#: Where a person finds each kind of token and its organisation switch (Label Studio 1.23).
_PAT_PLACES = ("a personal access token of this server (Account & Settings > Personal Access "
               "Token), not revoked or expired, and that personal access tokens are enabled "
               "for the organisation (Organization > API Tokens Settings)")
_LEGACY_PLACES = ("the legacy token of this server (Account & Settings > Legacy Token), and "
                  "that legacy tokens are enabled for the organisation (Organization > API "
                  "Tokens Settings > Legacy Tokens; new organisations have them off)")


def jwt_claims(token: str) -> dict | None:
    """The claims of a JWT, read without checking its signature (the server checks it), or
    ``None`` when ``token`` is not one: three base64url parts, a JSON object in the middle."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
        return None
    return claims if isinstance(claims, dict) else None


def token_kind(token: str, token_type: str = "auto") -> str:
    """The kind of an API token, ``"legacy"`` or ``"personal"``.

    :param token_type: ``legacy``, ``personal``, or ``auto`` (the default): a JWT whose
        ``token_type`` claim is ``refresh`` is a personal access token, anything else a
        legacy token.
    :raises ValueError: for another ``token_type``, or ``personal`` with a token that is not
        a JWT refresh token.
    """
    if token_type not in TOKEN_TYPES:
        raise ValueError(f"token_type must be one of {', '.join(TOKEN_TYPES)}; got "
                         f"{token_type!r}")
    personal = (jwt_claims(token) or {}).get("token_type") == "refresh"
    if token_type == "personal" and not personal:
        raise ValueError("token_type is 'personal' but the token is not a personal access "
                         "token (a JWT refresh token: three dot-separated parts, 'eyJ...'); "
                         "a legacy token needs token_type 'legacy' or 'auto'")
    if token_type == "auto":
        return "personal" if personal else "legacy"
    return token_type


def access_expiry(access: str, now: float) -> float:
    """The time (``time.time()`` scale) at which to stop using an access token: its ``exp``
    less :data:`REFRESH_MARGIN_S` (at most a quarter of its lifetime); without an ``exp``,
    never (a 401 renews it)."""
    claims = jwt_claims(access) or {}
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return float("inf")
    lifetime = exp - iat if isinstance(iat, (int, float)) and iat < exp else exp - now
    return float(exp) - min(REFRESH_MARGIN_S, max(0.0, lifetime) / 4)


def retryable(method: str, *, status: int | None, sent: bool) -> bool:
    """The one retry rule of both clients (see the module docstring)."""
    if status is None:
        return not sent or method.upper() in IDEMPOTENT
    if status in RETRY_ALWAYS:
        return True
    return status >= 500 and method.upper() in IDEMPOTENT


def backoff_delay(attempt: int, base: float, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt``, at most ``cap`` seconds."""
    delay = min(cap, base * (2**attempt))
    return delay * (0.5 + random.random() / 2)


def task_filter(field: str, operator: str, value: Any, type_: str = "String") -> dict:
    """One Label Studio data-manager filter item; ``field`` like ``data.hitl_run_id``."""
    return {"filter": f"filter:tasks:{field}", "operator": operator, "type": type_,
            "value": value}


def run_filters(dag_id: str, run_id: str) -> list[dict]:
    """Filters selecting one round's tasks (our own data keys)."""
    return [task_filter("data.hitl_dag_id", "equal", dag_id),
            task_filter("data.hitl_run_id", "equal", run_id)]


#: Filters added to :func:`run_filters` to count a round's finished tasks: annotated ones, and
#: ones only skipped (a skip is a cancelled annotation; ``total_annotations`` excludes it).
ANNOTATED = [task_filter("total_annotations", "greater", 0, "Number")]
SKIPPED_ONLY = [task_filter("total_annotations", "equal", 0, "Number"),
                task_filter("cancelled_annotations", "greater", 0, "Number")]
#: With overlapped tasks: Label Studio's own ``is_labeled`` (shown as ``completed_at``), true
#: once a task has as many non-cancelled answers as its per-task ``overlap``; a skip ends
#: only a task meant for one person (an overlapped one goes on to the next person).
LABELED = [task_filter("completed_at", "empty", False, "Datetime")]
SKIPPED_SINGLE = SKIPPED_ONLY + [task_filter("data.hitl_annotators", "equal", 1, "Number")]


NOT_LABELED = [task_filter("completed_at", "empty", True, "Datetime")]
#: With overlap, the tasks Label Studio still counts as open are read (one page) once there
#: are this few: its counters can lag behind its annotations (measured with 1.23.2 on SQLite:
#: four people answering at once left a task with 3 answers from 3 people at
#: ``total_annotations`` 2, never labeled), and only the answers say who answered.
RECOUNT_AT_MOST = 100


def recount(open_tasks: Sequence[dict]) -> dict[str, int]:
    """Which of the tasks Label Studio counts as open are done by their answers: a task is
    annotated when it has ``data.hitl_annotators`` non-cancelled answers from different
    people, skipped when it is meant for one person and its only answers are skips."""
    from hitl_plugin.labeling.collect import annotator_of

    annotated = skipped = 0
    for task in open_tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        need = data.get("hitl_annotators")
        need = need if isinstance(need, int) and not isinstance(need, bool) and need > 0 else 1
        answers = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        people = {annotator_of(a) for a in answers if not a.get("was_cancelled")}
        people.discard(None)
        if len(people) >= need:
            annotated += 1
        elif need == 1 and answers and not people:
            skipped += 1
    return {"annotated": annotated, "skipped": skipped}


def _read_open(counts: dict[str, int], annotators: int) -> bool:
    """Whether to read the tasks still open by the counters (see :func:`round_counts`)."""
    return annotators > 1 and 0 < counts["total"] - counts["annotated"] <= RECOUNT_AT_MOST


def _completed(counts: dict[str, int], open_tasks: Sequence[dict] | None) -> dict[str, int]:
    if open_tasks is not None:  # "annotated" counted the labeled tasks; add what is done
        recounted = recount(open_tasks)
        counts["annotated"] += recounted["annotated"]
        counts["skipped"] = recounted["skipped"]
    counts["completed"] = counts["annotated"] + counts["skipped"]
    return counts


def count_filters(annotators: int = 1) -> tuple[tuple[str, list[dict]], ...]:
    """The three count queries of a round's wait: ``total``, ``annotated``, ``skipped``.

    :param annotators: the most people any task of the round needs (1: the queries of a
        round without overlap, unchanged).
    """
    if annotators <= 1:
        return ("total", []), ("annotated", ANNOTATED), ("skipped", SKIPPED_ONLY)
    return ("total", []), ("annotated", LABELED), ("skipped", SKIPPED_SINGLE)


def _query(filters: Sequence[dict], conjunction: str = "and") -> str:
    return json.dumps({"filters": {"conjunction": conjunction, "items": list(filters)}})


def _reason(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:200] or "(empty body)"
    if isinstance(body, dict):
        parts = [body[k] if isinstance(body[k], str) else json.dumps(body[k])
                 for k in ("detail", "validation_errors", "message", "error") if body.get(k)]
        if parts:
            return ": ".join(parts)[:300]
    return json.dumps(body)[:300]


def _tls_failure(exc: BaseException) -> BaseException | None:
    """The TLS error behind a connection failure (a certificate that does not verify), if any."""
    import ssl

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


TLS_HINT = ("the server's TLS certificate does not verify; set the connection's extra "
            "'ca_bundle' to the CA file that signed it (waiting will not fix this)")


class _Base:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, ca_bundle: str | None = None, token_type: str = "auto",
                 image_url_prefix: str | None = None, conn_id: str | None = None) -> None:
        where = f"Connection {conn_id!r}: " if conn_id else ""
        if not url:
            raise ValueError(f"{where}Label Studio URL is empty")
        if not token:
            raise ValueError(f"{where}Label Studio API token is empty")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        try:
            kind = token_kind(token, token_type)
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None
        self.url = url.rstrip("/")
        self._token = token
        #: ``"legacy"`` or ``"personal"`` (see :func:`token_kind`).
        self.token_type = kind
        self._asked_type = token_type
        self.conn_id = conn_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        #: TLS verification: the CA bundle's path, else the system's (True).
        self.verify: str | bool = ca_bundle or True
        #: Where this server reads our images (``None``: its local-files serving of the
        #: storage root), see :func:`hitl_plugin.labeling.tasks.image_url`.
        self.image_url_prefix = image_url_prefix or None
        #: The current access token of a personal access token, and when to stop using it.
        self._access: str | None = None
        self._access_until = 0.0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(url={self.url!r}, token_type={self.token_type!r}, "
                f"retries={self.retries})")

    __str__ = __repr__

    def _scrub(self, text: str, limit: int | None = 300) -> str:
        return scrub(text, self._token, self._access, limit=limit)

    def _error(self, reason: str, *, status: int | None, method: str, path: str,
               sent: bool, permanent: bool = False) -> LabelStudioError:
        return LabelStudioError(self._scrub(reason), status=status, method=method,
                                path=path.split("?")[0], sent=sent, permanent=permanent)

    # -- authentication -------------------------------------------------------------------
    def _auth_headers(self, access: str | None) -> dict[str, str]:
        if self.token_type == "legacy":
            return {"Authorization": f"Token {self._token}"}
        return {"Authorization": f"Bearer {access}"}

    def _access_valid(self) -> bool:
        return self._access is not None and time.time() < self._access_until

    def _forget_access(self, used: dict[str, str]) -> None:
        """Drop the access token ``used`` (unless another call has renewed it meanwhile)."""
        if self._access is not None and used == self._auth_headers(self._access):
            self._access, self._access_until = None, 0.0

    def _keep_access(self, body: Any) -> str:
        """Keep the access token of a refresh answer (``{"access": ...}``) and return it."""
        access = body.get("access") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise self._error("the token refresh answer has no 'access' token (is this "
                              "Label Studio?)", status=None, method="POST",
                              path=REFRESH_PATH, sent=True, permanent=True)
        self._access, self._access_until = access, access_expiry(access, time.time())
        log.debug("Label Studio at %s: new access token", self.url)
        return access

    def _where(self) -> str:
        conn = f" (connection {self.conn_id!r})" if self.conn_id else ""
        return f"the server at {self.url}{conn}"

    def _kind_text(self) -> str:
        if self.token_type == "personal":
            return "personal access token"
        if self._asked_type == "auto":
            return ("legacy API token (token_type auto: the token is not a JWT, so it was sent "
                    "as a legacy token)")
        if (jwt_claims(self._token) or {}).get("token_type") == "refresh":
            return ("legacy API token (token_type legacy, but the token looks like a personal "
                    "access token: set the extra token_type to 'personal' or 'auto')")
        return "legacy API token"

    def _after_error(self, exc: LabelStudioError, headers: dict[str, str], *,
                     renewed: bool) -> None:
        """Raise ``exc``; or, for a 401, the configuration error it stands for; except after
        a personal access token's first 401: then drop the access token (the next try gets
        a new one)."""
        if exc.status != 401:
            raise exc
        if renewed or self.token_type != "personal":
            raise self._unauthorized(exc) from None
        log.info("Label Studio %s %s: HTTP 401; getting a new access token and trying once "
                 "more", exc.method, exc.path)
        self._forget_access(headers)

    def _unauthorized(self, error: LabelStudioError) -> LabelStudioAuthError:
        """The configuration error a 401 that stays stands for."""
        if self.token_type == "personal":
            what = (f"rejects the {self._kind_text()} even with a fresh access token "
                    f"({error.reason}): check that the connection's password is {_PAT_PLACES}")
        else:
            what = (f"rejects the {self._kind_text()} ({error.reason}): check that the "
                    f"connection's password is {_LEGACY_PLACES}; or use a personal access "
                    f"token (extra token_type 'personal' or 'auto')")
        return LabelStudioAuthError(self._scrub(f"{self._where()} {what}", None), status=401,
                                    method=error.method, path=error.path, sent=True)

    def _refresh_failed(self, error: LabelStudioError) -> LabelStudioError:
        """The error of a failed token refresh (400/401: the token itself is refused)."""
        if error.status not in (400, 401):
            return error
        return LabelStudioAuthError(self._scrub(
            f"{self._where()} refuses to exchange the personal access token for an access "
            f"token ({error.reason}): check that the connection's password is {_PAT_PLACES}; "
            f"a legacy token needs the extra token_type 'legacy' or 'auto'", None),
            status=error.status, method="POST", path=REFRESH_PATH, sent=True)

    def _http_error(self, response: Any, *, method: str, path: str,
                    ok404: bool) -> LabelStudioError | None:
        """The error an HTTP answer stands for, or None when it is a success (or an allowed
        404); works for requests' and httpx's responses alike."""
        status = response.status_code
        if status < 400 or (status == 404 and ok404):
            return None
        return self._error(_reason(response), status=status, method=method, path=path,
                           sent=True)

    def _answer(self, response: Any, *, method: str, path: str,
                ok404: bool) -> tuple[LabelStudioError | None, Any]:
        """``(error, body)`` of an HTTP answer (requests' or httpx's).

        A success whose body is not JSON (a proxy's or a maintenance page) is an error that
        waiting may fix: retried like a dropped connection.
        """
        error = self._http_error(response, method=method, path=path, ok404=ok404)
        if error is not None or (response.status_code == 404 and ok404):
            return error, None
        try:
            return None, response.json() if response.content else None
        except ValueError:
            text = (response.text or "")[:80].replace("\n", " ")
            return self._error(f"HTTP {response.status_code} but the answer is not JSON "
                               f"(a proxy or maintenance page?): {text!r}", status=None,
                               method=method, path=path, sent=True), None

    def _count(self, body: Any, path: str) -> int:
        """The ``total`` of a count query; anything but a count is a (transient) error."""
        if body is None:  # ok404: no such page
            return 0
        total = body.get("total") if isinstance(body, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise self._error(f"the count answer has no integer 'total' (got {total!r})",
                              status=None, method="GET", path=path, sent=True)
        return total

    def _retry_delay(self, error: LabelStudioError, *, method: str, attempt: int) -> float:
        """Seconds before the next try; raises ``error`` when no retry is allowed."""
        if attempt >= self.retries or not retryable(method, status=error.status,
                                                    sent=error.sent):
            raise error
        delay = backoff_delay(attempt, self.backoff)
        log.warning("Label Studio %s %s failed (%s); retry %s/%s in %.1f s", error.method,
                    error.path, error.reason if error.status is None else f"HTTP {error.status}",
                    attempt + 1, self.retries, delay)
        return delay

    @staticmethod
    def _total(body: Any, seen: int) -> int:
        """The response's task count (a plain list has none: ask for the next page)."""
        if isinstance(body, dict) and isinstance(body.get("total"), int):
            return body["total"]
        return seen + 1

    @staticmethod
    def _payload(body: Any) -> list[dict]:
        return body.get("tasks", []) if isinstance(body, dict) else list(body or [])


class LabelStudioClient(_Base):
    """Synchronous Label Studio client (requests), with timeouts and bounded retries.

    :param url: base URL, e.g. ``http://127.0.0.1:8081``.
    :param token: API token: a legacy token or a personal access token (see ``token_type``).
    :param timeout: seconds per HTTP call.
    :param retries: retries after the first try (only per :func:`retryable`).
    :param backoff: first backoff delay in seconds, doubled per retry.
    :param ca_bundle: CA file that verifies the server's TLS certificate (also for the token
        refresh); default: the system's.
    :param token_type: ``legacy``, ``personal`` or ``auto`` (see :func:`token_kind`).
    :param image_url_prefix: where this server reads our images (see
        :func:`hitl_plugin.labeling.tasks.image_url`); ``None``: local-files serving.
    :param conn_id: the Airflow connection it was built from, named in error messages.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, ca_bundle: str | None = None, token_type: str = "auto",
                 image_url_prefix: str | None = None, conn_id: str | None = None) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries, backoff=backoff,
                         ca_bundle=ca_bundle, token_type=token_type,
                         image_url_prefix=image_url_prefix, conn_id=conn_id)
        self._session = requests.Session()
        self._refresh_lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict | None = None,
                json_body: Any = None, ok404: bool = False, timeout: float | None = None) -> Any:
        """Call the API; return the decoded JSON (``None`` for an empty body or ``ok404``).

        With a personal access token, a 401 gets one new access token and one more try.

        :raises LabelStudioAuthError: the server rejects the token (a configuration error).
        :raises LabelStudioError: after the retries allowed for this method are spent.
        """
        method = method.upper()
        for renewed in (False, True):
            headers = self._headers()
            try:
                return self._call(method, path, headers=headers, params=params,
                                  json_body=json_body, ok404=ok404, timeout=timeout)
            except LabelStudioError as exc:
                self._after_error(exc, headers, renewed=renewed)
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self) -> dict[str, str]:
        """The Authorization header; with a personal access token, renewed when due."""
        if self.token_type == "legacy":
            return self._auth_headers(None)
        with self._refresh_lock:  # one refresh for the threads that find the token due
            if not self._access_valid():
                self._refresh()
            return self._auth_headers(self._access)

    def _refresh(self) -> str:
        """Exchange the personal access token for a new access token (retried like a GET:
        asking twice does no harm)."""
        try:
            body = self._call("POST", REFRESH_PATH, headers={}, retry_as="GET",
                              json_body={"refresh": self._token})
        except LabelStudioError as exc:
            raise self._refresh_failed(exc) from None
        return self._keep_access(body)

    def _call(self, method: str, path: str, *, headers: dict[str, str],
              params: dict | None = None, json_body: Any = None, ok404: bool = False,
              timeout: float | None = None, retry_as: str | None = None) -> Any:
        """One API call with the retries of :func:`retryable` (for ``retry_as``, default
        ``method``); return the decoded JSON."""
        attempt = 0
        while True:
            try:
                response = self._session.request(
                    method, f"{self.url}{path}", params=params, json=json_body,
                    headers=headers, timeout=timeout or self.timeout,
                    verify=self.verify)  # explicit: REQUESTS_CA_BUNDLE would win otherwise
            except requests.exceptions.SSLError as exc:
                raise self._error(f"{TLS_HINT}: {_short(exc)}", status=None, method=method,
                                  path=path, sent=False, permanent=True) from None
            except requests.ConnectionError as exc:
                # A refused or unreachable connection never carried the request.
                sent = not isinstance(exc, requests.ConnectTimeout) and _was_sent(exc)
                error = self._error(type(exc).__name__ + ": " + _short(exc), status=None,
                                    method=method, path=path, sent=sent)
            except requests.Timeout as exc:
                error = self._error(f"timed out after {timeout or self.timeout} s ("
                                    f"{type(exc).__name__})", status=None, method=method,
                                    path=path, sent=True)
            except requests.RequestException as exc:
                raise self._error(type(exc).__name__ + ": " + _short(exc), status=None,
                                  method=method, path=path, sent=True) from None
            else:
                error, body = self._answer(response, method=method, path=path, ok404=ok404)
                if error is None:
                    return body
            time.sleep(self._retry_delay(error, method=retry_as or method, attempt=attempt))
            attempt += 1

    # -- projects -------------------------------------------------------------------------
    def whoami(self) -> dict:
        return self.request("GET", "/api/current-user/whoami")

    def projects(self, title_contains: str | None = None) -> list[dict]:
        """Every project (id, title, model_version...), or those whose title contains a text."""
        found: list[dict] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "page_size": 100}
            if title_contains:
                params["title"] = title_contains
            body = self.request("GET", "/api/projects/", params=params, ok404=True)
            if body is None:
                return found
            batch = body.get("results", []) if isinstance(body, dict) else body
            found.extend(batch)
            if not isinstance(body, dict) or not body.get("next") or not batch:
                return found
            page += 1

    def find_project(self, title: str) -> dict | None:
        """The project with this exact title and the lowest id, or ``None``."""
        matches = [p for p in self.projects(title) if p.get("title") == title]
        return min(matches, key=lambda p: p["id"]) if matches else None

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict:
        return self.request("POST", "/api/projects/",
                            json_body={"title": title, "label_config": label_config, **fields})

    def get_project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{int(project_id)}/")

    def update_project(self, project_id: int, **fields: Any) -> dict:
        return self.request("PATCH", f"/api/projects/{int(project_id)}/", json_body=fields)

    def local_storages(self, project_id: int) -> list[dict]:
        body = self.request("GET", "/api/storages/localfiles/", params={"project": project_id})
        return list(body or [])

    def create_local_storage(self, project_id: int, path: str, title: str) -> dict:
        return self.request("POST", "/api/storages/localfiles/", json_body={
            "project": int(project_id), "path": path, "use_blob_urls": True, "title": title,
            "regex_filter": ""})

    # -- tasks ----------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """One bulk import; return the new task ids in order. Not retried once sent."""
        body = self.request("POST", f"/api/projects/{int(project_id)}/import",
                            params={"return_task_ids": "true"}, json_body=tasks,
                            timeout=max(self.timeout, 120.0))
        return [int(t) for t in (body or {}).get("task_ids", [])]

    def count_tasks(self, project_id: int, filters: Sequence[dict]) -> int:
        """Count tasks matching ``filters`` (server side; reads one task at most)."""
        body = self.request("GET", "/api/tasks/", params={
            "project": int(project_id), "page_size": 1, "page": 1, "fields": "task_only",
            "query": _query(filters)}, ok404=True)
        return self._count(body, "/api/tasks/")

    def iter_tasks(self, project_id: int, filters: Sequence[dict] = (), *,
                   conjunction: str = "and", fields: str = "all", page_size: int = 100,
                   include: str | None = None) -> Iterator[dict]:
        """Yield the tasks matching ``filters``, page by page (a page past the end is a 404).

        :param include: only these task fields (e.g. ``"id,data"``), much faster to serve.
        """
        page, seen = 1, 0
        while True:
            params = {"project": int(project_id), "page": page, "page_size": page_size,
                      "fields": fields, "query": _query(filters, conjunction)}
            if include:
                params["include"] = include
            body = self.request("GET", "/api/tasks/", params=params, ok404=True)
            batch = self._payload(body)
            yield from batch
            seen += len(batch)
            # The server may cap page_size (TASK_API_PAGE_SIZE_MAX): stop on its total.
            if not batch or seen >= self._total(body, seen):
                return
            page += 1

    def tasks_by_key(self, project_id: int, dag_id: str, run_id: str,
                     image_ids: Sequence[int], *,
                     batch_label: str | None = None) -> dict[str, list[dict]]:
        """The round's tasks whose key is one of ``(dag_id, run_id, image_ids)``, by key.

        One server-side filtered query on the round (``data.hitl_dag_id``/``hitl_run_id``)
        and either the batch label (``data.hitl_batch``, exact when the round's batch split
        never changed) or the range of the image ids (``data.hitl_image_id`` between min and
        max: exact always, but it reads every task of the round in that range). Only ``id``
        and ``data`` are read (``include``: ~4x faster than whole tasks), 1,000 per page.
        Keys are checked here again: nothing the service returns is trusted.
        """
        from hitl_plugin.labeling.tasks import hitl_key

        wanted = {hitl_key(dag_id, run_id, i) for i in image_ids}
        if not wanted:
            return {}
        if batch_label is not None:
            narrow = task_filter("data.hitl_batch", "equal", batch_label)
        else:
            narrow = task_filter("data.hitl_image_id", "in",
                                 {"min": min(image_ids), "max": max(image_ids)}, "Number")
        filters = run_filters(dag_id, run_id) + [narrow]
        found: dict[str, list[dict]] = {}
        for task in self.iter_tasks(project_id, filters, fields="task_only", page_size=1000,
                                    include="id,data"):
            key = (task.get("data") or {}).get(KEY_FIELD)
            if key in wanted:
                found.setdefault(key, []).append(task)
        return found

    def set_overlap(self, task_id: int, annotators: int) -> dict:
        """Make Label Studio want ``annotators`` answers to the task (its per-task
        ``overlap``): its labeling stream then serves the task to that many different people,
        and counts it labeled (``is_labeled``) only then."""
        return self.request("PATCH", f"/api/tasks/{int(task_id)}/",
                            json_body={"overlap": int(annotators)})

    def create_annotation(self, task_id: int, result: list[dict], *,
                          was_cancelled: bool = False) -> dict:
        return self.request("POST", f"/api/tasks/{int(task_id)}/annotations/",
                            json_body={"result": result, "was_cancelled": was_cancelled})


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _was_sent(exc: requests.ConnectionError) -> bool:
    """False when the connection could not even be opened (refused, unreachable)."""
    text = repr(exc)
    markers = ("NewConnectionError", "Connection refused", "Failed to establish",
               "Name or service not known", "No route to host")
    return not any(m in text for m in markers)


class AsyncLabelStudioClient(_Base):
    """Asynchronous Label Studio client (httpx) for the triggerer, same retry rule and the
    same authentication as :class:`LabelStudioClient` (whose parameters it takes).

    Use as ``async with AsyncLabelStudioClient(url, token) as client: ...``.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, ca_bundle: str | None = None, token_type: str = "auto",
                 image_url_prefix: str | None = None, conn_id: str | None = None) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries, backoff=backoff,
                         ca_bundle=ca_bundle, token_type=token_type,
                         image_url_prefix=image_url_prefix, conn_id=conn_id)
        self._client: Any = None
        self._refresh_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncLabelStudioClient:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout, verify=self.verify)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(self, method: str, path: str, *, params: dict | None = None,
                      json_body: Any = None, ok404: bool = False) -> Any:
        """Async form of :meth:`LabelStudioClient.request` (sleeps with ``asyncio.sleep``)."""
        method = method.upper()
        for renewed in (False, True):
            headers = await self._headers()
            try:
                return await self._call(method, path, headers=headers, params=params,
                                        json_body=json_body, ok404=ok404)
            except LabelStudioError as exc:
                self._after_error(exc, headers, renewed=renewed)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _headers(self) -> dict[str, str]:
        """Async form of :meth:`LabelStudioClient._headers`."""
        if self.token_type == "legacy":
            return self._auth_headers(None)
        async with self._refresh_lock:
            if not self._access_valid():
                try:
                    body = await self._call("POST", REFRESH_PATH, headers={}, retry_as="GET",
                                            json_body={"refresh": self._token})
                except LabelStudioError as exc:
                    raise self._refresh_failed(exc) from None
                self._keep_access(body)
            return self._auth_headers(self._access)

    async def _call(self, method: str, path: str, *, headers: dict[str, str],
                    params: dict | None = None, json_body: Any = None, ok404: bool = False,
                    retry_as: str | None = None) -> Any:
        """Async form of :meth:`LabelStudioClient._call`."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, verify=self.verify)
        attempt = 0
        while True:
            try:
                response = await self._client.request(
                    method, f"{self.url}{path}", params=params, json=json_body,
                    headers=headers)
            except httpx.ConnectError as exc:
                if _tls_failure(exc) is not None:
                    raise self._error(f"{TLS_HINT}: {_short(exc)}", status=None, method=method,
                                      path=path, sent=False, permanent=True) from None
                error = self._error(f"ConnectError: {_short(exc)}", status=None, method=method,
                                    path=path, sent=False)
            except httpx.TimeoutException as exc:
                error = self._error(f"timed out after {self.timeout} s ({type(exc).__name__})",
                                    status=None, method=method, path=path,
                                    sent=not isinstance(exc, httpx.ConnectTimeout))
            except httpx.TransportError as exc:
                error = self._error(f"{type(exc).__name__}: {_short(exc)}", status=None,
                                    method=method, path=path, sent=True)
            else:
                error, body = self._answer(response, method=method, path=path, ok404=ok404)
                if error is None:
                    return body
            await asyncio.sleep(self._retry_delay(error, method=retry_as or method,
                                                  attempt=attempt))
            attempt += 1

    async def count_tasks(self, project_id: int, filters: Sequence[dict]) -> int:
        """Count tasks matching ``filters`` server side (reads one task at most)."""
        body = await self.request("GET", "/api/tasks/", params={
            "project": int(project_id), "page_size": 1, "page": 1, "fields": "task_only",
            "query": _query(filters)}, ok404=True)
        return self._count(body, "/api/tasks/")

    async def iter_tasks(self, project_id: int, filters: Sequence[dict] = (), *,
                         fields: str = "task_only", page_size: int = 100) -> AsyncIterator[dict]:
        page, seen = 1, 0
        while True:
            body = await self.request("GET", "/api/tasks/", params={
                "project": int(project_id), "page": page, "page_size": page_size,
                "fields": fields, "query": _query(filters)}, ok404=True)
            batch = self._payload(body)
            for task in batch:
                yield task
            seen += len(batch)
            if not batch or seen >= self._total(body, seen):
                return
            page += 1


async def round_counts(client: AsyncLabelStudioClient, project_id: int, dag_id: str,
                       run_id: str, annotators: int = 1) -> dict[str, int]:
    """Count one round's tasks: ``total``, ``annotated``, ``skipped`` and ``completed``.

    Three filtered count queries (:func:`count_filters`), each reading one task at most. With
    overlap (``annotators > 1``), once at most :data:`RECOUNT_AT_MOST` tasks are open by
    Label Studio's counters, those tasks are read and counted by their answers
    (:func:`recount`): one more request.
    """
    base = run_filters(dag_id, run_id)
    counts = {name: await client.count_tasks(project_id, base + extra)
              for name, extra in count_filters(annotators)}
    open_tasks = [t async for t in client.iter_tasks(
        project_id, base + NOT_LABELED, fields="all", page_size=RECOUNT_AT_MOST)
    ] if _read_open(counts, annotators) else None
    return _completed(counts, open_tasks)


def round_counts_sync(client: LabelStudioClient, project_id: int, dag_id: str,
                      run_id: str, annotators: int = 1) -> dict[str, int]:
    """Synchronous :func:`round_counts` for the sensor's first poke."""
    base = run_filters(dag_id, run_id)
    counts = {name: client.count_tasks(project_id, base + extra)
              for name, extra in count_filters(annotators)}
    open_tasks = list(client.iter_tasks(
        project_id, base + NOT_LABELED, fields="all", page_size=RECOUNT_AT_MOST)
    ) if _read_open(counts, annotators) else None
    return _completed(counts, open_tasks)
