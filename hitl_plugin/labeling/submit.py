"""Submit one batch of a round's selection to Label Studio, idempotently.

The key of a task is ``hitl_key = <dag_id>|<run_id>|<image_id>``. Before importing, the batch's
keys already in the project are read back with server-side filters; only the missing samples
are imported, in ONE bulk import. When the import fails after it may have reached the server
(a dropped connection, a timeout, a 5xx), the keys are read again before anything is resent,
so retries (ours or Airflow's) never create a second task for a key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from hitl_plugin.exceptions import ArgumentError, LabelStudioError
from hitl_plugin.labeling.client import LabelStudioClient, backoff_delay
from hitl_plugin.labeling.project import set_model_version
from hitl_plugin.labeling.tasks import hitl_key, to_task
from hitl_plugin.locks import file_lock
from hitl_plugin.paths import RoundPaths
from hitl_plugin.schemas import SelectionManifest, SubmitResult, write_json_atomic
from hitl_plugin.templated import blank

log = logging.getLogger(__name__)


def project_and_expected(submissions: Iterable[SubmitResult] | None,
                         project_id: int | str | None = None) -> tuple[int, int | None]:
    """The project id and the number of tasks the submit step recorded (None: unknown).

    :param submissions: the results of the round's mapped submit tasks (a list, or Airflow's
        lazy sequence of them).
    :param project_id: the project, when no submissions are given (or to check them).
    :raises ArgumentError: when they name no project, or more than one.
    """
    results = [] if blank(submissions) else list(submissions)  # type: ignore[arg-type]
    bad = [r for r in results if not isinstance(r, dict) or blank(r.get("project_id"))]
    if bad:
        raise ArgumentError(f"submissions must be the submit step's results, got {bad[0]!r}")
    ids = {int(r["project_id"]) for r in results}
    if not blank(project_id):
        ids.add(int(project_id))  # type: ignore[arg-type]
    if len(ids) != 1:
        raise ArgumentError(f"expected one Label Studio project id, got {sorted(ids)} (pass "
                            f"project_id or the submit step's results)")
    expected = (sum(int(r.get("submitted", 0)) + int(r.get("already_present", 0))
                    for r in results) if results else None)
    return ids.pop(), expected


def _other_splits(paths: RoundPaths, start: int, stop: int, image_ids: list[int]) -> bool:
    """Whether any of ``image_ids`` may have been sent under another batch label.

    True when a record of this round holds one of the ids under other bounds, or when the
    record of these bounds holds other ids (the selection was written again); also for an
    unreadable record. Each record lists its image ids from before its import.
    """
    ours = set(image_ids)
    for path in paths.submissions.glob("*-*.json"):
        try:
            a, b = (int(v) for v in path.stem.split("-"))
        except ValueError:
            continue
        try:
            ids = set(json.loads(path.read_text(encoding="utf-8")).get("image_ids") or ())
        except (OSError, ValueError, AttributeError, TypeError):
            return True
        if (a, b) == (start, stop) and ids != ours:
            return True
        if (a, b) != (start, stop) and ids & ours:
            return True
    return False


@contextmanager
def _import_turn(paths: RoundPaths | None) -> Iterator[None]:
    """One bulk import of the round at a time.

    The mapped submit tasks of a round run side by side, but Label Studio on SQLite (the
    embedded mode) serialises writes, and two imports at once cost far more than one after
    the other: measured here, 25 tasks imported in 0.09 s alone and in 3.0 s when another
    import of 25 ran at the same time. Key queries and project setup still run in parallel.
    """
    if paths is None:
        yield
        return
    with file_lock(paths.import_lock, what="a bulk import of this round's batches"):
        yield


def _wait_for_keys(client: LabelStudioClient, project_id: int, dag_id: str, run_id: str,
                   ids: list[int], missing: list[str], batch_label: str | None,
                   settle_s: float) -> None:
    """Poll the keys of a sent import until they are all there or ``settle_s`` has passed.

    An import that timed out or lost its answer may still be committing on the server;
    reading the keys once, a second later, would find them missing and import them again
    (duplicates that people would label twice).
    """
    began, delay = time.monotonic(), 0.5
    while True:
        found = client.tasks_by_key(project_id, dag_id, run_id, ids, batch_label=batch_label)
        if all(k in found for k in missing):
            return
        left = settle_s - (time.monotonic() - began)
        if left <= 0:
            log.warning("%s of %s keys still missing after %.0f s: importing them again",
                        sum(1 for k in missing if k not in found), len(missing), settle_s)
            return
        time.sleep(min(delay, left))
        delay = min(delay * 2, 8.0)


def submit_batch(client: LabelStudioClient, *, project_id: int, selection: SelectionManifest,
                 start: int, stop: int, dag_id: str, run_id: str, model_version: str,
                 paths: RoundPaths | None = None, attempts: int = 3, backoff: float = 1.0,
                 settle_s: float = 30.0, sync_model_version: bool = True,
                 image_url_prefix: str | None = None) -> dict:
    """Import the samples ``selection.items[start:stop]`` that the project does not hold yet.

    :param paths: the round's files: ``submissions/<start>-<stop>.json`` is written there
        BEFORE the import (``status: importing``, the image ids) and after it (``done``, the
        task ids). Its records make the narrow key query safe (see
        :meth:`LabelStudioClient.tasks_by_key`); without it the exact range query is used.
    :param attempts: import attempts within this call when the import fails transiently.
    :param settle_s: after a failed import that was sent, how long to wait for its keys to
        appear (a server still committing it) before importing the missing ones again.
    :param sync_model_version: after importing, make the project show ``model_version`` (Label
        Studio accepts a version only once predictions carry it); False when it already does.
    :param image_url_prefix: where Label Studio reads the images (the connection's extra,
        see :func:`hitl_plugin.labeling.tasks.image_url`); None: local-files URLs.
    :return: ``{"project_id", "submitted", "already_present", "batch": [start, stop],
        "duplicates", "overlapped", "submission"}``; ``overlapped`` counts the tasks answered
        by several people; ``duplicates`` counts keys found more than once (left as
        they are; the lowest task id is used).
    :raises LabelStudioError: when the service keeps failing.
    """
    n = len(selection.items)
    if not (0 <= start <= stop <= n):
        raise ValueError(f"batch [{start}, {stop}) is outside the selection of {n} items")
    names = {c.id: c.name for c in selection.categories}
    samples = {hitl_key(dag_id, run_id, s.image_id): s for s in selection.items[start:stop]}
    task_ids: dict[str, int] = {}
    already: set[str] = set()
    duplicates = 0
    submitted = 0
    label = f"{int(start)}-{int(stop)}"
    # The narrow query (by batch label) is exact while the round's batch split never changed;
    # the submissions folder tells whether another split of this round was ever sent.
    ids = [s.image_id for s in samples.values()]
    narrow = paths is not None and not _other_splits(paths, start, stop, ids)
    if not narrow:
        log.info("Batch %s: checking keys by image id range (no record of the round's split)",
                 label)
    # The "importing" record is written before any import of a batch, so a batch without a
    # record was never sent: its first attempt needs no key query (the same trust in the round
    # folder as the narrow query; a retry, or a crash after the record, still queries).
    never_sent = narrow and not paths.submission(start, stop).exists()
    if paths is not None:
        write_json_atomic(paths.submission(start, stop), {
            "status": "importing", "dag_id": dag_id, "run_id": run_id, "batch": [start, stop],
            "image_ids": ids})
    for attempt in range(max(1, attempts)):
        found = {} if never_sent and attempt == 0 else client.tasks_by_key(
            project_id, dag_id, run_id, ids, batch_label=label if narrow else None)
        for key, tasks in found.items():
            if key not in task_ids:
                already.add(key)
            task_ids[key] = min(int(t["id"]) for t in tasks)
        duplicates = sum(1 for tasks in found.values() if len(tasks) > 1)
        missing = [k for k in samples if k not in task_ids]
        if not missing:
            break
        threshold = selection.auto_accept.threshold if selection.auto_accept else None
        payload = [to_task(samples[k], dag_id=dag_id, run_id=run_id,
                           model_version=model_version, names=names, batch=label,
                           accept_threshold=threshold, image_url_prefix=image_url_prefix)
                   for k in missing]
        try:
            with _import_turn(paths):
                new_ids = client.import_tasks(project_id, payload)
        except LabelStudioError as exc:
            if not exc.transient or attempt + 1 >= attempts:
                raise
            if exc.sent:  # it may have reached the server, which may still be committing it
                log.warning("Import of %s tasks failed (%s) after it was sent; waiting up to "
                            "%.0f s for its keys before importing again", len(payload),
                            exc.reason, settle_s)
                _wait_for_keys(client, project_id, dag_id, run_id, ids, missing,
                               label if narrow else None, settle_s)
                continue
            delay = backoff_delay(attempt, backoff)
            log.warning("Import of %s tasks failed (%s); reading the keys again in %.1f s",
                        len(payload), exc.reason, delay)
            time.sleep(delay)
            continue
        if len(new_ids) != len(missing):
            raise LabelStudioError(f"import returned {len(new_ids)} task ids for {len(missing)} "
                                   f"tasks", status=None, method="POST",
                                   path=f"/api/projects/{project_id}/import")
        task_ids.update(zip(missing, new_ids))
        submitted += len(new_ids)
        break
    # Label Studio's per-task overlap: its labeling stream serves an overlapped task to that
    # many different people. Set on every call (idempotent): a crash between the import and
    # these calls is mended by the retry.
    overlapped = [(task_ids[k], s.annotators) for k, s in samples.items()
                  if s.annotators > 1 and k in task_ids]
    for task_id, annotators in overlapped:
        client.set_overlap(task_id, annotators)
    if sync_model_version and submitted and (
            client.get_project(project_id) or {}).get("model_version") != model_version:
        set_model_version(client, project_id, model_version)
    result = {
        "project_id": int(project_id),
        "submitted": submitted,
        "already_present": len(already),
        "batch": [int(start), int(stop)],
        "duplicates": duplicates,
        "overlapped": len(overlapped),
    }
    if paths is not None:
        path = paths.submission(start, stop)
        write_json_atomic(path, {
            **result, "status": "done", "dag_id": dag_id, "run_id": run_id,
            "model_version": model_version, "image_ids": ids,
            "tasks": {str(samples[k].image_id): task_ids[k] for k in samples if k in task_ids},
        })
        result["submission"] = str(path)
    log.info("Batch [%s, %s): %s new tasks, %s already present in project %s", start, stop,
             submitted, len(already), project_id)
    return result
