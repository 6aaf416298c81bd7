"""``hitl bench waits``: N labeling waits at once in the distributed mode, and what they cost.

It starts the native distributed stack (:class:`hitl_dev.distributed.DistributedStack`:
PostgreSQL, Redis, Airflow on the CeleryExecutor with its workers) and a Label Studio, puts
a round of tasks nobody labels into one project, and runs one DAG whose
:class:`~hitl_plugin.sensors.LabelsReadySensor` is mapped over N (the product's sensor and
trigger, unchanged). Airflow's connection points at a small counting proxy in front of Label
Studio. Once every wait is deferred, it measures over a window of whole poll intervals:

- worker slots held: Celery's own count of active tasks on every worker (``inspect
  active``), and the scheduler's running slots of the default pool;
- the triggerer's CPU (of one core) and memory (RSS of its process tree);
- requests reaching Label Studio per wait per poll interval.

stdout carries only the final JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from hitl_dev.bench import emit, own_label_studio

log = logging.getLogger(__name__)

DAG_ID = "hitl_bench_waits"
ROUND = ("bench_round", "bench")

DAG_FILE = '''"""hitl bench waits: {n} LabelsReadySensor waits at once (generated)."""
from datetime import timedelta

from airflow.sdk import DAG
from hitl_plugin.sensors import LabelsReadySensor

with DAG({dag_id!r}, schedule=None, catchup=False, max_active_runs=1,
         max_active_tasks={n} + 16) as dag:
    LabelsReadySensor.partial(
        task_id="wait", project_id={project}, round_dag_id={round_dag!r},
        round_run_id={round_run!r}, poke_interval={poke}, timeout=timedelta(hours=2),
        on_timeout="continue", max_active_tis_per_dagrun={n},
    ).expand(min_fraction=[1.0] * {n})
'''


class CountingProxy:
    """A reverse proxy in front of Label Studio that counts the requests it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.times: list[float] = []
        self.lock = threading.Lock()
        proxy = self
        session = threading.local()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                with proxy.lock:
                    proxy.times.append(time.monotonic())
                if not hasattr(session, "s"):
                    session.s = requests.Session()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                resp = session.s.request(self.command, proxy.upstream + self.path,
                                         headers=headers, data=body, timeout=120)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, start: float, stop: float) -> int:
        with self.lock:
            return sum(1 for t in self.times if start <= t < stop)

    def close(self) -> None:
        self.server.shutdown()


def _cpu_and_rss(root: int) -> tuple[float, float]:
    """CPU seconds (user + system) and RSS MiB of a process tree."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    from hitl_dev.distributed import process_tree

    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def run(n: int, poke: float, windows: int, work: Path) -> dict:
    from hitl_dev.distributed import DistributedStack
    from hitl_dev.labelstudio import free_port
    from hitl_dev.stack import AirflowApi
    from hitl_plugin.labeling.client import LabelStudioClient

    storage = work / "storage"
    (storage / "images").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack_:
        ls = stack_.enter_context(own_label_studio(work / "ls-data", storage))
        with LabelStudioClient(ls.url, ls.token) as client:
            project = client.create_project(
                "hitl bench waits", '<View><Image name="image" value="$image"/>'
                '<RectangleLabels name="label" toName="image"><Label value="a"/>'
                "</RectangleLabels></View>")["id"]
            client.import_tasks(project, [{"data": {
                "image": f"/x/{i}.png", "hitl_dag_id": ROUND[0], "hitl_run_id": ROUND[1],
                "hitl_image_id": i, "hitl_key": f"{ROUND[0]}|{ROUND[1]}|{i}"}}
                for i in range(20)])
        proxy = CountingProxy(ls.url)
        stack_.callback(proxy.close)
        dags = work / "dags"
        dags.mkdir(exist_ok=True)
        (dags / "bench_waits.py").write_text(DAG_FILE.format(
            n=n, dag_id=DAG_ID, project=project, round_dag=ROUND[0], round_run=ROUND[1],
            poke=float(poke)))
        dist = DistributedStack(base=work / "stack", storage=storage, api_port=free_port(),
                                pg_port=free_port(), redis_port=free_port(), dags_folder=dags,
                                concurrency=8,
                                extra_env={"AIRFLOW__CORE__PARALLELISM": str(n + 32)})
        dist.start()
        stack_.callback(dist.stop)
        airflow = dist.airflow()
        api = AirflowApi(airflow.url, "admin", airflow.password())
        run_id = api.start_round(DAG_ID, label_studio_url=proxy.url, token=ls.token)
        began = time.monotonic()
        deadline = began + 900

        def states() -> dict[str, int]:
            out: dict[str, int] = {}
            for t in api.task_instances(DAG_ID, run_id):
                out[t["state"] or "none"] = out.get(t["state"] or "none", 0) + 1
            return out

        while time.monotonic() < deadline:
            now = states()
            log.info("waits: %s", now)
            if now.get("deferred", 0) >= n:
                break
            time.sleep(5)
        else:
            raise RuntimeError(f"not every wait deferred after 900 s: {states()}")
        all_deferred_s = time.monotonic() - began
        os.environ.update({k: v for k, v in airflow.env().items()
                           if k.startswith("AIRFLOW")})
        from airflow.providers.celery.executors.celery_executor import app as celery_app

        triggerer = int((airflow.run_dir / "triggerer.pid").read_text())
        window = windows * poke
        time.sleep(poke)  # let the first polls after deferring spread out
        cpu0, _ = _cpu_and_rss(triggerer)
        t0 = time.monotonic()
        active_max, pool_running_max, rss_max = 0, 0, 0.0
        while time.monotonic() - t0 < window:
            active = celery_app.control.inspect(timeout=2).active() or {}
            active_max = max(active_max, sum(len(v) for v in active.values()))
            pool = api._call("GET", "/pools/default_pool")
            pool_running_max = max(pool_running_max, int(pool.get("running_slots", 0)))
            rss_max = max(rss_max, _cpu_and_rss(triggerer)[1])
            time.sleep(2)
        t1 = time.monotonic()
        cpu1, _ = _cpu_and_rss(triggerer)
        requests_in_window = proxy.count(t0, t1)
        final = states()
    return {
        "summary": {
            "waits": n,
            "poke_interval_s": poke,
            "worker_slots_held_max": max(active_max, pool_running_max),
            "triggerer_cpu_fraction": round((cpu1 - cpu0) / (t1 - t0), 4),
            "triggerer_rss_mib": round(rss_max, 1),
            "requests_per_wait_per_poll": round(requests_in_window / (n * (t1 - t0) / poke), 3),
        },
        "details": {
            "celery_active_tasks_max": active_max,
            "default_pool_running_slots_max": pool_running_max,
            "window_s": round(t1 - t0, 1),
            "requests_in_window": requests_in_window,
            "seconds_until_all_deferred": round(all_deferred_s, 1),
            "task_states_at_end": final,
            "label_studio_tasks_per_round": 20,
            "executor": "CeleryExecutor (worker-default, worker-gpu-1, worker-gpu-2)",
        },
    }


def main(argv: list[str] | None = None, prog: str = "hitl bench waits") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=200, help="waits at once (default 200)")
    parser.add_argument("--poke-interval", type=float, default=30.0,
                        help="seconds between polls (default 30)")
    parser.add_argument("--windows", type=int, default=3,
                        help="poll intervals measured once all waits are deferred (default 3)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hitl-bench-waits-"))
    began = time.monotonic()
    try:
        result = run(args.waits, args.poke_interval, args.windows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "waits", "command": "hitl bench waits " + " ".join(
        argv if argv is not None else sys.argv[3:]), "seconds": round(time.monotonic() - began),
        **result}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
