"""The embedded stack: Airflow (SQLite, LocalExecutor) and Label Studio on 127.0.0.1.

``airflow standalone`` would do most of this, but its log server binds every interface,
so the four Airflow components are started here one by one (``--skip-serve-logs``), each
detached with a PID file, so that ``hitl stack stop`` (and ``make stop``) can end them
later from another shell. Used by ``make demo`` and by the end-to-end tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from hitl_dev import PROJECT_DIR
from hitl_dev.labelstudio import pid_alive, port_in_use

log = logging.getLogger(__name__)

COMPONENTS = {
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "api-server": ["api-server"],
}


#: Tasks whose time is not the round's overhead: the trainings, a person, the labeling wait.
NOT_OVERHEAD = ("train", "retrain", "approve_checkpoint", "wait_for_labels")


class StackError(RuntimeError):
    """A component of the stack failed to start or answer."""


def is_our_airflow(pid: int) -> bool:
    """Whether ``pid`` leads its own process group and runs ``airflow``: the only processes
    a PID file of ours may make us signal (never pid 0 or 1, never our own group)."""
    if pid <= 1 or pid == os.getpid():
        return False
    try:
        if os.getpgid(pid) != pid or pid == os.getpgid(0):
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ProcessLookupError):
        return False
    return any(Path(os.fsdecode(a)).name == "airflow" for a in argv if a)


def stop_pid_file(pid_file: Path, *, grace: float = 20.0) -> bool:
    """Stop the process group named by a PID file: SIGINT, then SIGTERM, then SIGKILL.

    Only when the PID is one of our Airflow components (:func:`is_our_airflow`): a stale
    file whose number now belongs to another process is removed, and nothing is signalled.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if not is_our_airflow(pid):
        log.warning("%s names pid %s, which is not an Airflow component of ours: nothing "
                    "signalled, file removed", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return False
    # Airflow's components stop cleanly only on SIGINT; escalate if they hang.
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        if not pid_alive(pid):
            break
    pid_file.unlink(missing_ok=True)
    return True


@dataclass
class AirflowStack:
    """Airflow 3 components for one storage root, all bound to 127.0.0.1.

    :param home: the storage root (``$HITL_HOME``); Airflow's home is ``<home>/airflow``.
    :param port: the API server's port.
    :param dags_folder: folder with the DAG files (the repository's ``dags/``).
    :param extra_env: more environment for every component (e.g. test settings).
    """

    home: Path
    port: int = 8080
    dags_folder: Path = PROJECT_DIR / "dags"
    parallelism: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def run_dir(self) -> Path:
        return self.airflow_home / "run"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "passwords.json"

    def password(self) -> str:
        return json.loads(self.password_file.read_text())["admin"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HITL_HOME": str(self.home),
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                "simple_auth_manager.SimpleAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "5",
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def running(self) -> dict[str, int | None]:
        status: dict[str, int | None] = {}
        for name in COMPONENTS:
            pid_file = self.run_dir / f"{name}.pid"
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                pid = None
            status[name] = pid if pid and pid_alive(pid) else None
        return status

    def start(self, *, timeout: float = 240.0) -> None:
        """Migrate the database, start the components and wait until the API answers."""
        if all(self.running().values()):
            log.info("Airflow already running at %s", self.url)
            return
        if port_in_use("127.0.0.1", self.port):
            raise StackError(
                f"port {self.port} on 127.0.0.1 is taken; stop what uses it or choose another "
                "port (HITL_AIRFLOW_PORT)"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
            self.password_file.chmod(0o600)
        env = self.env()
        t0 = time.monotonic()
        log.info("Airflow: migrating the database in %s", self.airflow_home)
        subprocess.run(
            [self._airflow(), "db", "migrate"], env=env, check=True,
            stdout=open(self.run_dir / "db-migrate.log", "w"), stderr=subprocess.STDOUT,
        )
        for name in COMPONENTS:
            self.start_component(name, env)
        self._wait_healthy(timeout, t0)

    def start_component(self, name: str, env: dict[str, str] | None = None) -> int:
        """Start one component, detached, with its PID file; return its pid (also to bring
        back a component that died, as the fault tests do with the triggerer)."""
        logfile = open(self.run_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [self._airflow(), *COMPONENTS[name]], env=env or self.env(), stdout=logfile,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait_healthy(self, timeout: float, t0: float) -> None:
        deadline = t0 + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            dead = [name for name, pid in self.running().items() if pid is None]
            if dead:
                tails = {n: _tail(self.run_dir / f"{n}.log") for n in dead}
                raise StackError(
                    f"Airflow component(s) exited: {dead}\n{json.dumps(tails, indent=1)}"
                )
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=3).json()
                states = {k: v.get("status") for k, v in health.items() if isinstance(v, dict)}
                if all(s == "healthy" for s in states.values()) and {
                    "scheduler", "triggerer", "dag_processor"
                } <= set(states):
                    # Task processes talk to the API server's execution API, which is set up
                    # on its first request (2.3 s here, then ~2 ms): without this, the first
                    # task of the first run would wait for it.
                    requests.get(f"{self.url}/execution/health", timeout=30).raise_for_status()
                    log.info("Airflow healthy at %s after %.0f s", self.url, time.monotonic() - t0)
                    return
                last = json.dumps(states)
            except (requests.RequestException, ValueError) as exc:
                last = type(exc).__name__
            time.sleep(2)
        raise StackError(f"Airflow not healthy after {timeout:.0f} s (last: {last})")

    def stop(self) -> None:
        for name in reversed(list(COMPONENTS)):
            if stop_pid_file(self.run_dir / f"{name}.pid"):
                log.info("stopped %s", name)
        # Task processes run in sessions of their own: end those of this Airflow home too.
        for pid in _pids_holding(self.airflow_home):
            log.info("stopping leftover task process %s", pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and pid_alive(pid):
                time.sleep(0.2)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pids_holding(folder: Path) -> list[int]:
    """Processes with a file open under ``folder`` (Linux /proc; Airflow's task processes
    rewrite their environment for their process title, so it cannot be read instead)."""
    prefix = str(folder) + os.sep
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry.name))
    return found


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class AirflowApi:
    """A small client for Airflow's REST API (v2) with the simple auth manager."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        resp = requests.post(
            f"{self.url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        if resp.status_code >= 400:
            raise StackError(f"Airflow login failed: HTTP {resp.status_code}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        resp = self.session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if resp.status_code >= 400:
            raise StackError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 360.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            resp = self.session.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=30)
            if resp.status_code == 200:
                return resp.json()
            if time.monotonic() > deadline:
                errors = self._call("GET", "/importErrors")
                raise StackError(f"DAG {dag_id} not parsed after {timeout:.0f} s; import "
                                 f"errors: {json.dumps(errors)[:2000]}")
            time.sleep(3)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def set_connection(self, conn: dict) -> None:
        resp = self.session.patch(
            f"{self.url}/api/v2/connections/{conn['connection_id']}", json=conn, timeout=30
        )
        if resp.status_code == 404:
            self._call("POST", "/connections", json=conn)
        elif resp.status_code >= 400:
            raise StackError(f"connection {conn['connection_id']}: HTTP {resp.status_code}")

    def start_round(self, dag_id: str, *, label_studio_url: str, token: str,
                    conn_id: str = "label_studio_default") -> str:
        """Point the Label Studio connection at a server, wait for the DAG to be parsed,
        unpause it and trigger one run; return the run id."""
        self.set_connection({"connection_id": conn_id, "conn_type": "label_studio",
                             "host": label_studio_url, "password": token})
        self.wait_for_dag(dag_id)
        self.unpause(dag_id)
        return self.trigger(dag_id)["dag_run_id"]

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> dict:
        body: dict = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, all pages (the API serves 100 at most per page)."""
        found: list[dict] = []
        while True:
            page = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
                              f"?limit=100&offset={len(found)}")
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page.get("total_entries", 0):
                return found

    def task_durations(self, dag_id: str, run_id: str) -> dict:
        """Each task instance's duration (seconds, Airflow's own record), and the round's
        overhead: every task but the trainings, the approval and the wait, over training."""
        durations = {}
        for ti in self.task_instances(dag_id, run_id):
            index = ti.get("map_index", -1)
            name = ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"
            durations[name] = round(float(ti.get("duration") or 0.0), 2)
        train = durations.get("train", 0.0)
        other = sum(v for k, v in durations.items() if k.split("[")[0] not in NOT_OVERHEAD)
        return {"durations": dict(sorted(durations.items())), "train_s": train,
                "overhead_s": round(other, 2),
                "overhead_pct": round(100.0 * other / train, 1) if train else None}

    def fail_run(self, dag_id: str, run_id: str, *, tries: int = 5) -> dict:
        """Mark a run failed (what a person does to stop a round). On SQLite the API server
        answers 500 "Database error" when the write waits out the lock behind busy tasks:
        tried again, a few times."""
        path, body = f"/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"}
        for _ in range(tries - 1):
            try:
                return self._call("PATCH", path, json=body)
            except StackError as exc:
                if "HTTP 500" not in str(exc):
                    raise
                log.warning("marking %s %s failed: %s; again in 2 s", dag_id, run_id, exc)
                time.sleep(2)
        return self._call("PATCH", path, json=body)  # the last try raises what it meets

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> dict:
        return self._call(
            "POST", f"/dags/{dag_id}/clearTaskInstances",
            json={"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids,
                  "only_failed": False, "reset_dag_runs": True, "include_downstream": False},
        )

    def wait_run(self, dag_id: str, run_id: str, *, timeout: float, poll: float = 5.0,
                 progress=None) -> dict:
        """Wait for a DAG run to end; ``progress(task_instances)`` is called on changes."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            run = self.dag_run(dag_id, run_id)
            if progress is not None:
                tis = self.task_instances(dag_id, run_id)
                now = sorted((t["task_id"], t.get("map_index", -1), t["state"]) for t in tis)
                if now != seen:
                    progress(tis)
                    seen = now
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise StackError(f"run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(poll)


def main(argv: list[str], prog: str = "hitl stack") -> int:
    from hitl_plugin.config import storage_root

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("HITL_AIRFLOW_PORT", 8080)))
    args = parser.parse_args(argv)
    home = storage_root()
    stack = AirflowStack(home, port=args.port)
    if args.action == "start":
        stack.start()
        print(f"Airflow: {stack.url}  user admin  password {stack.password()}")
    elif args.action == "stop":
        stack.stop()
        from hitl_dev import labelstudio as server

        server.main(["stop"], prog="hitl labelstudio")
    else:
        print(json.dumps({"airflow": stack.running(), "url": stack.url}, indent=1))
    return 0
