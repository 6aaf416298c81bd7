"""``hitl bench fanout``: the submit operator's code path against one raw bulk import.

Builds a synthetic selection of ``--n`` samples (two predicted boxes each), then into fresh
projects of a running Label Studio:

- ``raw``: ONE ``POST /api/projects/{id}/import`` of the whole payload (the floor);
- ``operator``: what the mapped submit tasks do, batch after batch: the submit step
  (:func:`hitl_plugin.steps.submit`: project setup, the idempotency check, keys already
  present by server-side filters, one bulk import per batch, the submissions file);
- ``retry``: the operator path again on the same project (everything already present: what an
  Airflow retry of every batch costs).

Prints JSON: tasks per second of each, and ``ratio = operator / raw`` (target >= 0.8).
Without ``--url`` it starts its own Label Studio on a free port in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hitl_dev.bench import own_label_studio


def synthetic_selection(n: int, *, dag_id: str, run_id: str):
    """A selection of ``n`` 160x120 images, each with two predicted boxes."""
    import random

    from hitl_plugin.schemas import SelectionManifest

    # Selections are ordered by score, not by id: each batch's ids spread over the whole range.
    ids = list(range(1, n + 1))
    random.Random(0).shuffle(ids)
    items = []
    for i in ids:
        items.append({
            "image_id": i, "file_name": f"bench/{i:06d}.png", "width": 160, "height": 120,
            "split": "pool" if i % 3 else "train",
            "reason": "uncertainty" if i % 3 else "label_error", "score": (i % 97) / 97.0,
            "suspicions": [] if i % 3 else [{"kind": "class_swap", "score": 0.7,
                                             "label_category_id": 1, "pred_category_id": 2}],
            "predictions": [
                {"bbox": [10.0 + i % 50, 12.0, 30.0, 25.0], "category_id": 1, "score": 0.81},
                {"bbox": [70.0, 40.0 + i % 30, 22.0, 18.0], "category_id": 2, "score": 0.42},
            ],
        })
    return SelectionManifest(
        dag_id=dag_id, run_id=run_id, dataset="bench", version="v0001", model_version="bench-m1",
        categories=[{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                    {"id": 3, "name": "triangle"}],
        strategy="hybrid", budget=n, seed=0, items=items)


def run_bench(url: str, token: str, *, n: int, batch_size: int, work: Path,
              images: Path, parallel: int = 1) -> dict:
    from hitl_plugin import steps
    from hitl_plugin.config import parse_config
    from hitl_plugin.labeling.client import LabelStudioClient, run_filters
    from hitl_plugin.labeling.project import ensure_project_info
    from hitl_plugin.labeling.tasks import to_task
    from hitl_plugin.model.select import batches
    from hitl_plugin.schemas import write_json_atomic

    dag_id, run_id = "bench_fanout", f"bench__{int(time.time())}"
    selection = synthetic_selection(n, dag_id=dag_id, run_id=run_id)
    names = {c.id: c.name for c in selection.categories}
    classes = [c.name for c in selection.categories]
    stamp = time.strftime("%H%M%S")
    with LabelStudioClient(url, token, timeout=300) as client:
        # raw: one bulk import of the same payload
        raw_project = ensure_project_info(
            client, title=f"bench-raw-{stamp}", class_names=classes, images_root=images,
            model_version="bench-m1")["id"]
        payload = [to_task(s, dag_id=dag_id, run_id=run_id, model_version="bench-m1",
                           names=names) for s in selection.items]
        began = time.perf_counter()
        raw_ids = client.import_tasks(raw_project, payload)
        raw_s = time.perf_counter() - began

        # operator path: the submit step itself (setup + idempotency check + one import per
        # batch), on a round whose storage root holds the images folder
        title = f"bench-op-{stamp}"
        config = parse_config({"dag_id": dag_id, "labeling": {"project_title": title}})
        rnd = steps.Round(config, Path(images).parent, dag_id, run_id)
        write_json_atomic(rnd.paths.selection, selection)
        plan = batches(n, batch_size, rnd.paths.selection)

        def one_batch(b: dict) -> dict:
            # each mapped task instance has its own process, hence its own connection
            with LabelStudioClient(url, token, timeout=300) as own:
                return steps.submit(rnd, own, batch=b, model_version="bench-m1")

        def operator_pass() -> tuple[float, int, int]:
            from concurrent.futures import ThreadPoolExecutor

            began = time.perf_counter()
            # Airflow runs the mapped submit tasks side by side, up to its parallelism.
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                outs = list(pool.map(one_batch, plan))
            new = sum(o["submitted"] for o in outs)
            old = sum(o["already_present"] for o in outs)
            return time.perf_counter() - began, new, old

        op_s, op_new, _ = operator_pass()
        retry_s, retry_new, retry_old = operator_pass()
        op_project = client.find_project(title)["id"]
        counts = {"raw": client.count_tasks(raw_project, run_filters(dag_id, run_id)),
                  "operator": client.count_tasks(op_project, run_filters(dag_id, run_id))}
    raw_tps, op_tps = n / raw_s, n / op_s
    return {
        "benchmark": "fanout",
        "n": n, "batch_size": batch_size, "batches": len(plan), "parallel": parallel,
        "raw": {"seconds": round(raw_s, 3), "tasks_per_s": round(raw_tps, 1),
                "task_ids": len(raw_ids), "tasks_in_project": counts["raw"]},
        "operator": {"seconds": round(op_s, 3), "tasks_per_s": round(op_tps, 1),
                     "submitted": op_new, "tasks_in_project": counts["operator"]},
        "retry": {"seconds": round(retry_s, 3), "submitted": retry_new,
                  "already_present": retry_old},
        "ratio": round(op_tps / raw_tps, 3),
        "target_ratio": 0.8,
        "no_duplicates": counts["operator"] == n and retry_new == 0,
    }


def main(argv: list[str] | None = None, prog: str = "hitl bench fanout") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="samples (default 5000)")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per batch")
    parser.add_argument("--parallel", type=int, default=1,
                        help="mapped submit tasks running at once, as Airflow may run them "
                             "(default 1: one batch after another)")
    parser.add_argument("--url", help="a running Label Studio (default: start one)")
    parser.add_argument("--token", default=os.environ.get("HITL_LS_TOKEN"),
                        help="its API token (default: $HITL_LS_TOKEN)")
    parser.add_argument("--images-root", type=Path,
                        help="with --url: the images folder under its local-files document "
                             "root (default: <storage root>/images)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="hitl-bench-fanout-"))
    try:
        with contextlib.ExitStack() as stack:
            url, token = args.url, args.token
            if not url:
                server = stack.enter_context(own_label_studio(work / "ls-data", work))
                url, token, images = server.url, server.token, work / "images"
            elif not token:
                parser.error("--token (or HITL_LS_TOKEN) is required with --url")
            else:
                from hitl_plugin.config import storage_root

                images = args.images_root or storage_root() / "images"
            result = run_bench(url, token, n=args.n, batch_size=args.batch_size, work=work,
                               parallel=args.parallel, images=images)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if result["no_duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
