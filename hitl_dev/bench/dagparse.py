"""``hitl bench dagparse``: how long parsing the DAG file takes, and what it imports.

Airflow's DAG processor (and every task process) already has Airflow imported, so the
file is timed after ``airflow.sdk`` is loaded, over several fresh interpreters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from hitl_dev import PROJECT_DIR

HEAVY = ("torch", "ultralytics", "pycocotools", "cv2", "matplotlib", "torchvision")

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import airflow.sdk  # already loaded in the DAG processor
t1 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t2 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({"airflow_import": t1 - t0, "parse": t3 - t2, "dags": sorted(bag.dag_ids),
                  "errors": len(bag.import_errors),
                  "heavy": sorted(m for m in sys.argv[2].split(",") if m in sys.modules)}))
"""


def measure(dag_file: Path, repeats: int = 5) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(dag_file), ",".join(HEAVY)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    parse = [r["parse"] for r in runs]
    return {
        "dag_file": str(dag_file),
        "dags": runs[-1]["dags"],
        "import_errors": runs[-1]["errors"],
        "parse_seconds_median": round(statistics.median(parse), 4),
        "parse_seconds_min": round(min(parse), 4),
        "parse_seconds_max": round(max(parse), 4),
        "airflow_sdk_import_seconds_median": round(
            statistics.median(r["airflow_import"] for r in runs), 4),
        "heavy_modules_imported": runs[-1]["heavy"],
        "repeats": repeats,
    }


def main(argv: list[str], prog: str = "hitl bench dagparse") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--dag-file", type=Path, default=PROJECT_DIR / "dags" / "hitl_pipelines.py")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.dag_file, args.repeats), indent=1))
    return 0
