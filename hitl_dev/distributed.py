"""The distributed mode, natively: what ``docker-compose.yaml`` runs, without Docker.

PostgreSQL (Airflow's metadata database and Celery's result backend) and Redis (Celery's
broker) from Debian's packages, with their data in a folder of their own on 127.0.0.1 and
ports of their own; Airflow's api-server, scheduler, dag-processor and triggerer on the
CeleryExecutor (:class:`hitl_dev.stack.AirflowStack`, the same DAGs and configs as the
embedded mode); and Celery workers with distinct hostnames, by default one on the
``default`` queue and two on ``gpu``.

Each worker reports its own name as the hostname of the tasks it runs (``[core]
hostname_callable`` = :func:`hitl_plugin.hostname.hostname`, as in the compose file), so
that a round records which worker ran each task.

PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hitl_dev.labelstudio import pid_alive
from hitl_dev.stack import PROJECT_DIR, AirflowStack, StackError, _tail

log = logging.getLogger(__name__)

#: worker name -> Celery queue (what the native test and the compose file run)
WORKERS = {"worker-default": "default", "worker-gpu-1": "gpu", "worker-gpu-2": "gpu"}


def _binary(name: str) -> str:
    """A PostgreSQL tool from Debian's versioned folder (newest version; not the wrappers in
    /usr/bin, which want a cluster of Debian's), else from the PATH (redis)."""
    versioned = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                       key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    found = str(versioned[-1]) if versioned else shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed (make setup installs postgresql and "
                         "redis-server)")
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and every process under it, found by parent pid (``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise StackError(f"{' '.join(args)} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-800:]}")


@dataclass
class DistributedStack:
    """PostgreSQL, Redis, Airflow on the CeleryExecutor and its workers, for one folder.

    :param base: holds the databases, the logs and Airflow's home.
    :param storage: the storage root the pipelines use (``HITL_HOME``).
    :param dags_folder: the DAG files (the repository's ``dags/`` by default).
    :param extra_env: more environment for every Airflow component and worker.
    """

    base: Path
    storage: Path
    api_port: int
    pg_port: int
    redis_port: int
    dags_folder: Path = PROJECT_DIR / "dags"
    workers: dict[str, str] = field(default_factory=lambda: dict(WORKERS))
    concurrency: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pg_dir(self) -> Path:
        """PostgreSQL's folder. As root, one of its own under the temp folder, owned by the
        ``postgres`` user (which cannot enter a root-only test folder)."""
        if os.geteuid() != 0:
            return self.base / "postgres"
        marker = self.base / "postgres-dir"
        if not marker.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="hitl-postgres-"))
            shutil.chown(folder, "postgres")
            marker.write_text(str(folder))
        return Path(marker.read_text())

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def airflow(self) -> AirflowStack:
        env = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.database_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "hitl_plugin.hostname.hostname",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "HITL_HOME": str(self.storage),
            **self.extra_env,
        }
        return AirflowStack(self.base, port=self.api_port, dags_folder=self.dags_folder,
                            extra_env=env)

    # -- PostgreSQL and Redis -------------------------------------------------------------

    def _as_postgres(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _start_postgres(self) -> None:
        data = self.pg_dir / "data"
        self.pg_dir.mkdir(parents=True, exist_ok=True)
        if not (data / "PG_VERSION").exists():
            _run(self._as_postgres([_binary("initdb"), "-D", str(data), "-U", "airflow",
                                    "--auth=trust", "-E", "UTF8"]))
        _run(self._as_postgres([
            _binary("pg_ctl"), "-D", str(data), "-w", "-l", str(self.pg_dir / "postgres.log"),
            "-o", f"-p {self.pg_port} -k {self.pg_dir} -c listen_addresses=127.0.0.1",
            "start"]))
        exists = subprocess.run(
            [_binary("psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "airflow",
             "-d", "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname='airflow'"],
            check=True, capture_output=True, text=True).stdout.strip()
        if exists != "1":
            _run([_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U",
                  "airflow", "airflow"])
        log.info("PostgreSQL on 127.0.0.1:%s (data in %s)", self.pg_port, data)

    def _start_redis(self) -> None:
        folder = self.base / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([_binary("redis-server"), "--port", str(self.redis_port),
                        "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                        "--appendonly", "no", "--daemonize", "yes",
                        "--pidfile", str(folder / "redis.pid"),
                        "--logfile", str(folder / "redis.log")], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ping = subprocess.run([_binary("redis-cli"), "-p", str(self.redis_port), "ping"],
                                  capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                log.info("Redis on 127.0.0.1:%s", self.redis_port)
                return
            time.sleep(0.2)
        raise StackError(f"Redis did not answer on port {self.redis_port}: "
                         f"{_tail(folder / 'redis.log')}")

    # -- the workers ----------------------------------------------------------------------

    def worker_env(self, name: str) -> dict[str, str]:
        return {**self.airflow().env(), "HITL_WORKER_HOSTNAME": name}

    def start_worker(self, name: str) -> int:
        """Start one Celery worker on its queue (also to bring one back)."""
        stack = self.airflow()
        logfile = open(stack.run_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [stack._airflow(), "celery", "worker", "--queues", self.workers[name],
             "--celery-hostname", f"{name}@%h", "--concurrency", str(self.concurrency),
             "--skip-serve-logs"],
            env=self.worker_env(name), stdout=logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        (stack.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait_workers(self, timeout: float = 120.0) -> None:
        stack = self.airflow()
        deadline = time.monotonic() + timeout
        waiting = set(self.workers)
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                text = (stack.run_dir / f"{name}.log").read_text(errors="replace")
                if f"{name}@" in text and " ready." in text:
                    waiting.discard(name)
                elif "Traceback" in text:
                    log_file = stack.run_dir / f"{name}.log"
                    raise StackError(f"worker {name} failed:\n{_tail(log_file)}")
            time.sleep(0.5)
        if waiting:
            raise StackError(f"workers not ready after {timeout:.0f} s: {sorted(waiting)}")

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """SIGKILL a worker and every process under it, as a lost machine: its pool and its
        task processes, which Airflow runs in sessions of their own (so the worker's process
        group is not enough; and ``setproctitle`` hides their environment and command line,
        so they are found by their parents)."""
        try:
            root = int((self.airflow().run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return []
        tree = process_tree(root)
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        log.info("signalled worker %s (%s): processes %s", name, signal.Signals(sig).name, tree)
        return tree

    # -- all of it ------------------------------------------------------------------------

    def start(self, *, timeout: float = 300.0) -> None:
        began = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._start_redis()
        self.airflow().start(timeout=timeout)
        for name in self.workers:
            self.start_worker(name)
        self._wait_workers()
        log.info("distributed stack up in %.0f s: Airflow at %s, workers %s",
                 time.monotonic() - began, self.airflow().url, self.workers)

    def stop(self) -> None:
        stack = self.airflow()
        for name in self.workers:  # warm shutdown, then whatever is left
            pids = self.kill_worker(name, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.2)
            self.kill_worker(name)
            (stack.run_dir / f"{name}.pid").unlink(missing_ok=True)
        stack.stop()
        pid_file = self.base / "redis" / "redis.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        if (self.pg_dir / "data" / "postmaster.pid").exists():
            subprocess.run(self._as_postgres([
                _binary("pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "-w",
                "stop"]), capture_output=True)
        if os.geteuid() == 0 and (self.base / "postgres-dir").exists():
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            (self.base / "postgres-dir").unlink()
