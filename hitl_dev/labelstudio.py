"""Run Label Studio as a local process: ``hitl labelstudio start|stop|status``.

Label Studio lives in its own virtual environment (``<repo>/.venv-labelstudio``): its SDK pins
numpy, PyJWT and OpenCV versions that clash with ours, so it is never imported from here; we
start its ``label-studio`` executable and talk to it over HTTP.

The server binds 127.0.0.1 only, creates its admin user and API token non-interactively on a
fresh data directory, serves our images from the storage root (local-files serving), and has its
analytics, Sentry and version check switched off so that it does not reach the network.

Plain Python: no Airflow import.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from hitl_dev import PROJECT_DIR

log = logging.getLogger(__name__)

#: Label Studio's own virtual environment (``make setup`` creates it in the checkout).
DEFAULT_VENV = Path(os.environ.get("HITL_LABELSTUDIO_VENV") or PROJECT_DIR / ".venv-labelstudio")
#: Not 8080: that is the embedded Airflow api-server's port.
DEFAULT_PORT = 8081
DEFAULT_USERNAME = "admin@hitl.local"
#: Fixed credentials of the embedded demo server (it binds 127.0.0.1 only); override them with
#: the environment variables ``HITL_LS_PASSWORD`` and ``HITL_LS_TOKEN``.
DEFAULT_PASSWORD = "hitl-demo-password"
DEFAULT_TOKEN = "hitl0demo0token0for0the0embedded0server"

PID_FILE = "labelstudio.pid"
LOG_FILE = "labelstudio.log"

#: Log lines that would mean the server tried to reach the network while starting.
NETWORK_MARKERS = (
    "pypi.org", "sentry", "Max retries exceeded", "NewConnectionError",
    "Name or service not known", "Temporary failure in name resolution",
    "Failed to establish a new connection", "latest version",
)


#: Run by :meth:`LabelStudioServer.stop_with_process` in its own small process: when the
#: watched process is gone (even killed with SIGKILL), stop the server named in the PID file.
_WATCHDOG = """
import json, os, signal, sys, time
watched, pid_file = int(sys.argv[1]), sys.argv[2]
def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
    except (PermissionError, OSError, IndexError):
        return True
while alive(watched):
    time.sleep(1.0)
try:
    with open(pid_file) as fh:
        pid = json.load(fh)["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        if b"label" not in fh.read():
            sys.exit(0)
except (OSError, ValueError, KeyError, TypeError):
    sys.exit(0)
for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    end = time.monotonic() + wait
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.2)
    if not alive(pid):
        break
try:
    os.unlink(pid_file)
except OSError:
    pass
"""


def exit_on_signals() -> None:
    """Make SIGTERM (and SIGINT) end this process through its ``finally`` blocks, so that a
    command which started a server stops it however it is ended (SIGKILL aside: see
    :meth:`LabelStudioServer.stop_with_process`)."""
    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


class LabelStudioServerError(RuntimeError):
    """Label Studio could not be started, stopped or reached."""


def default_data_dir() -> Path:
    """Return ``<HITL_HOME or ./.hitl>/labelstudio``."""
    return Path(os.environ.get("HITL_HOME") or ".hitl").absolute() / "labelstudio"


def default_token() -> str:
    """Return the API token: ``HITL_LS_TOKEN`` or the embedded demo's fixed token."""
    return os.environ.get("HITL_LS_TOKEN") or DEFAULT_TOKEN


def default_password() -> str:
    """Return the admin password: ``HITL_LS_PASSWORD`` or the embedded demo's fixed one."""
    return os.environ.get("HITL_LS_PASSWORD") or DEFAULT_PASSWORD


def port_in_use(host: str, port: int) -> bool:
    """Return True when something listens on ``host:port`` (or on ``localhost:port``).

    Both checks matter: we bind ``host``, while Label Studio itself probes ``localhost`` and,
    when that answers, silently moves to the next port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port with only TIME_WAIT connections left is free for a server.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                if s.connect_ex((address, port)) == 0:
                    return True
        except OSError:
            continue
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Return True when ``pid`` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_label_studio(pid: int) -> bool:
    """Return True when ``pid``'s command line is a Label Studio server (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pid file
    return b"label-studio" in cmdline or b"label_studio" in cmdline


class LabelStudioServer:
    """A Label Studio server run as a detached local process.

    :param data_dir: Label Studio's data directory (SQLite database, media); also holds the PID
        file, the log file and the process's ``HOME``.
    :param document_root: Root of local-files serving; task URLs
        ``/data/local-files/?d=images/<file>`` resolve to ``<document_root>/images/<file>``.
    :param port: TCP port to bind.
    :param host: Address to bind (127.0.0.1: reachable from this machine only).
    :param username: Admin user's e-mail, created on the first start.
    :param password: Admin password (default ``HITL_LS_PASSWORD`` or the demo's fixed one).
    :param token: API token (default ``HITL_LS_TOKEN`` or the demo's fixed one); fixed when the
        database is created: a later start with another token fails with a clear error.
    :param venv: Label Studio's virtual environment; ``HITL_LABEL_STUDIO_BIN`` overrides the
        executable.
    """

    def __init__(
        self,
        *,
        data_dir: Path | str,
        document_root: Path | str,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        username: str = DEFAULT_USERNAME,
        password: str | None = None,
        token: str | None = None,
        venv: Path | str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.document_root = Path(document_root).absolute()
        self.port = int(port)
        self.host = host
        self.username = username
        self.password = password or default_password()
        self.token = token or default_token()
        if len(self.token) <= 5:
            raise ValueError("Label Studio needs an API token longer than 5 characters")
        self.venv = Path(venv) if venv else DEFAULT_VENV
        self._proc: subprocess.Popen | None = None
        #: Set by :meth:`start`: True when the server was already running.
        self.already_running = False

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8081``."""
        return f"http://{self.host}:{self.port}"

    @property
    def executable(self) -> Path:
        """The ``label-studio`` executable (``HITL_LABEL_STUDIO_BIN`` overrides)."""
        override = os.environ.get("HITL_LABEL_STUDIO_BIN")
        return Path(override) if override else self.venv / "bin" / "label-studio"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate API calls."""
        return {"Authorization": f"Token {self.token}"}

    # -- state -------------------------------------------------------------------------------

    def _read_pid_file(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.pid_file.read_text())
            return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """Return the running server's pid from the PID file, or None (stale files are ignored)."""
        state = self._read_pid_file()
        if state is None:
            return None
        pid = state["pid"]
        return pid if pid_alive(pid) and _is_label_studio(pid) else None

    def api_status(self, timeout: float = 3.0) -> int | None:
        """Return the status of ``GET /api/projects`` with our token; None when unreachable."""
        try:
            response = requests.get(
                f"{self.url}/api/projects", headers=self.headers(), timeout=timeout,
                params={"page_size": 1},
            )
        except requests.RequestException:
            return None
        return response.status_code

    def status(self) -> dict[str, Any]:
        """Return ``{"running", "pid", "url", "api", "api_status", "data_dir", "log"}``.

        ``api`` is True when the API answers 200 to our token.
        """
        pid = self.pid()
        code = self.api_status() if pid is not None else None
        return {
            "running": pid is not None,
            "pid": pid,
            "url": self.url,
            "api": code == 200,
            "api_status": code,
            "username": self.username,
            "data_dir": str(self.data_dir),
            "document_root": str(self.document_root),
            "log": str(self.log_file),
        }

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def network_attempts(self) -> list[str]:
        """Return log lines that suggest the server tried to reach the network."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [
            line for line in text.splitlines()
            if any(marker.lower() in line.lower() for marker in NETWORK_MARKERS)
        ]

    # -- start / stop ------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Return the server process's environment."""
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update({
            "HOME": str(self.data_dir / "home"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            # Only effective when the database is created; makes "Token <token>" work.
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            # Lets webhooks reach an Airflow on 127.0.0.1.
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "PYTHONUNBUFFERED": "1",
        })
        env["PATH"] = f"{self.executable.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until its API answers our token.

        A no-op when our server already runs from this data directory.

        :raises LabelStudioServerError: the executable is missing, the port is taken, the token is
            rejected, the process exits early, or the API does not answer within ``timeout``.
        """
        self.already_running = False
        pid = self.pid()
        if pid is not None:
            running_port = (self._read_pid_file() or {}).get("port")
            if running_port != self.port:
                raise LabelStudioServerError(
                    f"Label Studio from {self.data_dir} already runs on port {running_port} "
                    f"(pid {pid}); stop it first to use port {self.port}"
                )
            log.info("Label Studio already running (pid %s) at %s", pid, self.url)
            self._wait_ready(pid, timeout)
            self.already_running = True
            return
        exe = self.executable
        if not exe.exists():
            raise LabelStudioServerError(
                f"Label Studio executable not found at {exe}: run `make setup` (it installs "
                f"Label Studio into {self.venv}) or set HITL_LABEL_STUDIO_BIN"
            )
        if port_in_use(self.host, self.port):
            raise LabelStudioServerError(
                f"port {self.port} is already in use on {self.host}: stop what listens there or "
                f"choose another port (--port); Label Studio would otherwise move to another "
                f"port silently"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "home").mkdir(exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        command = [
            str(exe), "start", "--no-browser", "--internal-host", self.host,
            "--port", str(self.port), "--data-dir", str(self.data_dir),
        ]
        log.info("starting Label Studio on %s (data %s, log %s)", self.url, self.data_dir,
                 self.log_file)
        with open(self.log_file, "ab") as out:
            out.write(f"\n=== hitl: starting {' '.join(command)} at {time.ctime()}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=self.environment(), start_new_session=True,
            )
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self._proc.pid, "port": self.port, "host": self.host}))
        os.replace(tmp, self.pid_file)
        try:
            self._wait_ready(self._proc.pid, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                exited = self._proc.poll() is not None
            else:
                exited = not pid_alive(pid)
            if exited:
                raise LabelStudioServerError(
                    f"Label Studio exited while starting; last log lines "
                    f"({self.log_file}):\n{self.log_tail()}"
                )
            code = self.api_status(timeout=5.0)
            if code == 200:
                return
            if code == 401:
                raise LabelStudioServerError(
                    f"Label Studio at {self.url} rejects the API token: its database in "
                    f"{self.data_dir} was created with another token (set HITL_LS_TOKEN to that "
                    f"one, or remove the data directory)"
                )
            if time.monotonic() > deadline:
                raise LabelStudioServerError(
                    f"Label Studio did not answer at {self.url} within {timeout:.0f} s (last "
                    f"status {code}); last log lines ({self.log_file}):\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop_with_process(self, pid: int | None = None) -> subprocess.Popen:
        """Stop the server when process ``pid`` (default: this one) ends, however it ends.

        The server runs in its own session so that a Ctrl-C in a terminal does not kill it;
        tests use this so that a test run killed by ``timeout`` or SIGKILL leaves no server
        behind. Spawns a small watchdog process; it stops whatever server the PID file names
        at that moment (so a restart in between is covered) and then exits.
        """
        return subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(pid or os.getpid()), str(self.pid_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, grace: float = 20.0) -> bool:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``grace`` seconds).

        :return: True when a running server was stopped.
        """
        pid = self.pid()
        if pid is None and self._proc is not None and self._proc.poll() is None:
            pid = self._proc.pid
        stopped = False
        if pid is not None:
            log.info("stopping Label Studio (pid %s)", pid)
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._running(pid):
                log.warning("Label Studio (pid %s) ignored SIGTERM for %.0f s: killing it",
                            pid, grace)
                self._signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while self._running(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            # Children left in the group (workers) go too.
            self._signal(pid, signal.SIGKILL, quiet=True)
            stopped = True
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return stopped

    def _running(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # also reaps our own child
        return pid_alive(pid)

    @staticmethod
    def _signal(pid: int, sig: int, quiet: bool = False) -> None:
        try:
            os.killpg(pid, sig)  # start_new_session: the pid leads its own group
        except ProcessLookupError:
            pass
        except PermissionError:
            if not quiet:
                raise
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _api(method: str, url: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
    response = requests.request(method, f"{url.rstrip('/')}{path}", headers=headers,
                                timeout=60, **kwargs)
    if response.status_code >= 400:
        raise LabelStudioServerError(f"{method} {path}: HTTP {response.status_code}: "
                                     f"{response.text[:300]}")
    return response.json() if response.content else None


def token_settings(url: str, headers: dict[str, str], **changes: bool) -> dict:
    """The organisation's API token settings, after setting ``changes`` (an org admin's
    Organization > API Tokens Settings): ``api_tokens_enabled`` (personal access tokens)
    and ``legacy_api_tokens_enabled`` (``Token <key>``), ``/api/jwt/settings``."""
    if changes:
        current = _api("GET", url, "/api/jwt/settings", headers)
        return _api("POST", url, "/api/jwt/settings", headers, json={**current, **changes})
    return _api("GET", url, "/api/jwt/settings", headers)


def new_personal_token(url: str, headers: dict[str, str]) -> str:
    """Create a personal access token for the user ``headers`` authenticate (what Account &
    Settings > Personal Access Token > Create New Token does), ``POST /api/token/``.

    Label Studio allows one at a time: the user's current one is revoked first (``POST
    /api/token/blacklist/`` with the shortened form ``GET /api/token/`` lists).
    """
    for old in _api("GET", url, "/api/token/", headers) or []:
        _api("POST", url, "/api/token/blacklist/", headers, json={"refresh": old["token"]})
    return str(_api("POST", url, "/api/token/", headers)["token"])


class StaticFiles:
    """Serve a folder over HTTP on 127.0.0.1 in a thread, as a static server or bucket would
    serve the images to a Label Studio on another host: ``with StaticFiles(folder) as files:
    files.url``. Answers with ``Access-Control-Allow-Origin: *``: Label Studio's labeling view
    loads an image with an ``XMLHttpRequest`` from the browser, which a server of another
    origin must allow.
    """

    def __init__(self, folder: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        import functools
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Handler(SimpleHTTPRequestHandler):
            def end_headers(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")
                super().end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.folder = Path(folder).absolute()
        handler = functools.partial(Handler, directory=str(self.folder))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (a file ``f`` is at ``url + "/f"``)."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StaticFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None, prog: str = "hitl labelstudio") -> int:
    """Run ``hitl labelstudio start|stop|status``."""
    from hitl_plugin.config import storage_root

    parser = argparse.ArgumentParser(
        prog=prog, description="Start, stop or check the local Label Studio server.",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--port", type=int, default=None,
        help=f"port (default: the running server's, else HITL_LS_PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="Label Studio data directory (default <HITL_HOME or ./.hitl>/labelstudio)",
    )
    parser.add_argument(
        "--root", type=Path, default=None,
        help="document root for local files: the storage root (default: hitl's storage root)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="start timeout in seconds")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    port = args.port
    if port is None:
        running = LabelStudioServer(data_dir=data_dir, document_root=data_dir)._read_pid_file()
        port = (running or {}).get("port") or int(os.environ.get("HITL_LS_PORT") or DEFAULT_PORT)
    server = LabelStudioServer(
        data_dir=data_dir, document_root=args.root or storage_root(), port=int(port),
    )
    if args.action == "start":
        try:
            began = time.monotonic()
            server.start(timeout=args.timeout)
        except LabelStudioServerError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        if server.already_running:
            print(f"Label Studio is already running (pid {server.pid()}).")
        print(f"Label Studio: {server.url}  user {server.username}  password {server.password}"
              f"  (ready after {time.monotonic() - began:.1f} s; log {server.log_file})")
        attempts = server.network_attempts()
        if attempts:
            print("warning: the log mentions network access:\n  " + "\n  ".join(attempts[:5]),
                  file=sys.stderr)
        return 0
    if args.action == "stop":
        print("Label Studio stopped" if server.stop() else "Label Studio was not running")
        return 0
    status = server.status()
    print(json.dumps(status, indent=1))
    return 0 if status["running"] else 3
