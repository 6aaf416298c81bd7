"""A tiny local stand-in for Label Studio, for faults a real server cannot produce on demand.

It serves the few endpoints our clients use (tasks with server-side filters, bulk import,
whoami, projects, the token refresh of personal access tokens), checks the token (legacy
``Token <key>``, or ``Bearer <access>`` with an access token it issued and that has not
expired), and can be told to answer an endpoint with an error
status, to answer late, or to drop the connection after reading a request. Real behaviour is
tested against the real server (tests/integration); this stub is only for faults.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Fault:
    method: str
    path: str
    status: int | None = None  # an error status to answer
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without an answer
    after: bool = False  # with drop: act on the request first (the server did the work)
    times: int = 1
    raw: bytes | None = None  # answer 200 with these bytes (a proxy's maintenance page)
    body: object = None  # answer 200 with this JSON instead of the route's
    commit_after: float = 0.0  # with drop: do the work this many seconds later (a slow commit)


def make_jwt(claims: dict) -> str:
    """A JWT-shaped token with these claims (its signature is random: the stub only
    compares whole tokens)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return ".".join([part({"alg": "HS256", "typ": "JWT"}), part(claims),
                     base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).rstrip(b"=").decode()])


def personal_token(user_id: int = 1) -> str:
    """A personal access token as Label Studio makes one: a JWT refresh token for 200 years."""
    now = int(time.time())
    return make_jwt({"token_type": "refresh", "exp": now + 200 * 365 * 86400, "iat": now,
                     "jti": uuid.uuid4().hex, "user_id": str(user_id)})


@dataclass
class StubState:
    token: str
    #: the personal access token it accepts at ``POST /api/token/refresh/`` (None: none)
    pat: str | None = None
    #: lifetime of the access tokens it issues, seconds
    access_ttl: float = 300.0
    #: access token -> its expiry (``time.time()``); an access token not here is refused
    access: dict[str, float] = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _matches(task: dict, item: dict) -> bool:
    name = item["filter"].removeprefix("filter:tasks:")
    if name.startswith("data."):
        value = task["data"].get(name[5:])
    else:
        value = task.get(name)
    op, want = item["operator"], item["value"]
    if op == "equal":
        return value == want
    if op == "greater":
        return value is not None and value > want
    if op == "in":
        return value is not None and want["min"] <= value <= want["max"]
    raise ValueError(f"stub does not know operator {op}")


def _select(tasks: list[dict], query: dict) -> list[dict]:
    filters = query.get("filters") or {"conjunction": "and", "items": []}
    items = filters.get("items", [])
    combine = all if filters.get("conjunction", "and") == "and" else any
    return [t for t in tasks if not items or combine(_matches(t, i) for i in items)]


class _Handler(BaseHTTPRequestHandler):
    state: StubState

    def log_message(self, *args) -> None:  # quiet
        pass

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.method == method and path.startswith(fault.path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        headers = {k: v for k, v in self.headers.items()}
        self.state.requests.append((method, url.path, headers))
        fault = self._fault(method, url.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop and fault.commit_after:
            threading.Timer(fault.commit_after, self._route,
                            args=(method, url.path, parse_qs(url.query), body)).start()
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None and fault.drop and not fault.after:
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None and fault.raw is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(fault.raw)))
            self.end_headers()
            self.wfile.write(fault.raw)
            return
        if fault is not None and fault.body is not None:
            return self._send(200, fault.body)
        if fault is not None and fault.status:
            # Echo the Authorization header back, as a careless server might.
            return self._send(fault.status, {"detail": f"boom (auth was "
                                             f"{headers.get('Authorization')})"})
        if method == "POST" and url.path == "/api/token/refresh/":
            return self._send(*self._refresh(body))
        if not self._authorized(self.headers.get("Authorization") or ""):
            return self._send(401, {"detail": "Invalid token."})
        status, answer = self._route(method, url.path, parse_qs(url.query), body)
        if fault is not None and fault.drop:  # after: the work is done, the answer is lost
            self.close_connection = True
            self.connection.close()
            return
        self._send(status, answer)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme == "Token":
            return value == self.state.token
        with self.state.lock:
            return scheme == "Bearer" and self.state.access.get(value, 0.0) > time.time()

    def _refresh(self, body: object) -> tuple[int, object]:
        """Label Studio's ``POST /api/token/refresh/``: a new access token for the PAT."""
        st = self.state
        refresh = body.get("refresh") if isinstance(body, dict) else None
        if not refresh:
            return 400, {"refresh": ["This field is required."]}
        if st.pat is None or refresh != st.pat:
            return 401, {"detail": "Token is invalid", "code": "token_not_valid"}
        now = time.time()
        access = make_jwt({"token_type": "access", "exp": int(now + st.access_ttl),
                           "iat": int(now), "jti": uuid.uuid4().hex, "user_id": "1"})
        with st.lock:
            st.access[access] = now + st.access_ttl
        return 200, {"access": access}

    def _route(self, method: str, path: str, params: dict, body: object) -> tuple[int, object]:
        st = self.state
        if method == "GET" and path == "/api/current-user/whoami":
            return 200, {"id": 1, "email": "stub@hitl.local"}
        if method == "GET" and path == "/api/tasks/":
            query = json.loads(params.get("query", ["{}"])[0])
            page = int(params.get("page", ["1"])[0])
            size = int(params.get("page_size", ["100"])[0])
            with st.lock:
                found = _select(st.tasks, query)
            chunk = found[(page - 1) * size: page * size]
            if page > 1 and not chunk:
                return 404, {"detail": "Invalid page."}
            return 200, {"total": len(found), "tasks": chunk}
        if method == "POST" and path.startswith("/api/projects/") and path.endswith("/import"):
            ids = []
            with st.lock:
                for task in body:
                    new = {"id": len(st.tasks) + 1, "data": task["data"], "annotations": [],
                           "total_annotations": 0, "cancelled_annotations": 0}
                    st.tasks.append(new)
                    ids.append(new["id"])
            return 201, {"task_count": len(ids), "task_ids": ids}
        return 404, {"detail": f"stub has no {method} {path}"}

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


class StubLabelStudio:
    """Run the stub on 127.0.0.1 in a thread: ``with StubLabelStudio() as stub: stub.url``."""

    def __init__(self, token: str = "stub-secret-token-4242") -> None:
        self.state = StubState(token=token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def token(self) -> str:
        return self.state.token

    def enable_pat(self, access_ttl: float = 300.0) -> str:
        """Accept a personal access token from now on (access tokens live ``access_ttl``
        seconds); return it."""
        self.state.pat = personal_token()
        self.state.access_ttl = access_ttl
        return self.state.pat

    def revoke_access(self) -> None:
        """Refuse every access token issued so far (as after a server-side key change)."""
        with self.state.lock:
            self.state.access.clear()

    def fault(self, method: str, path: str, **kwargs) -> Fault:
        fault = Fault(method, path, **kwargs)
        self.state.faults.append(fault)
        return fault

    def add_tasks(self, dag_id: str, run_id: str, image_ids, *, annotated=(), skipped=()):
        for i in image_ids:
            self.state.tasks.append({
                "id": len(self.state.tasks) + 1,
                "data": {"hitl_key": f"{dag_id}|{run_id}|{i}", "hitl_dag_id": dag_id,
                         "hitl_run_id": run_id, "hitl_image_id": i},
                "annotations": [], "total_annotations": int(i in annotated),
                "cancelled_annotations": int(i in skipped)})

    def annotate(self, image_id: int, *, skipped: bool = False) -> None:
        for task in self.state.tasks:
            if task["data"]["hitl_image_id"] == image_id:
                task["cancelled_annotations" if skipped else "total_annotations"] += 1

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.state.requests if m == method and p == path)

    def __enter__(self) -> StubLabelStudio:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
