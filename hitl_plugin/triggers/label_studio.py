"""Deferrable wait for a labeling round: :class:`LabelsReadyTrigger` runs in the triggerer.

It polls Label Studio with server-side filtered COUNT queries (total, annotated, skipped-only
tasks of the round), never downloading the tasks, and ends with one typed event:

- ``success``: every task is annotated or skipped;
- ``partial``: the absolute deadline passed and the completion policy says go on with what is
  done (share reached, or ``on_timeout="continue"``);
- ``error``: the deadline passed below the required share with ``on_timeout="fail"``
  (``timeout``), the service stayed unreachable until the deadline (``service_unavailable``),
  or it answered in a way waiting cannot fix (``auth``, ``not_found``, ``config``).

Its state is JSON (:meth:`LabelsReadyTrigger.serialize`), including the absolute deadline, so a
restarted triggerer resumes with the same deadline. It sleeps once per loop, also after errors
(with a capped backoff), and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypedDict

from airflow.triggers.base import BaseTrigger, TriggerEvent

Completion = Literal["all", "fraction"]
OnTimeout = Literal["continue", "fail"]
ErrorType = Literal["timeout", "service_unavailable", "auth", "not_found", "config"]


class LabelsReadyEventPayload(TypedDict):
    """The round may go on (``success``: all done; ``partial``: deadline passed)."""

    status: Literal["success", "partial"]
    total: int
    completed: int
    annotated: int
    skipped: int
    fraction: float
    deadline: str
    message: str


class LabelsErrorEventPayload(TypedDict):
    """The wait failed."""

    status: Literal["error"]
    error_type: ErrorType
    error: str
    total: int
    completed: int
    deadline: str


def to_deadline(value: datetime | str | float | int) -> datetime:
    """An absolute, timezone-aware deadline from a datetime, an ISO text or a POSIX time."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(float(value), tz=timezone.utc)
    else:
        dt = datetime.fromisoformat(str(value))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def decide(counts: dict[str, int], *, expected: int | None, completion: str,
           min_fraction: float, on_timeout: str, now: datetime,
           deadline: datetime) -> LabelsReadyEventPayload | LabelsErrorEventPayload | None:
    """The completion policy: an event when the wait is over, else ``None``.

    The share is ``completed / max(expected, total)``: ``expected`` (what the submit step
    recorded) guards against tasks that vanished from the service. ``all`` needs every task by
    the deadline; ``fraction`` needs ``min_fraction`` of them by the deadline; below that at
    the deadline, ``on_timeout`` decides: go on with what is done, or fail.
    """
    total, completed = int(counts.get("total", 0)), int(counts.get("completed", 0))
    denominator = max(int(expected or 0), total)
    fraction = 1.0 if denominator == 0 else completed / denominator
    common = {"total": denominator, "completed": completed, "deadline": deadline.isoformat()}
    ready = {**common, "annotated": int(counts.get("annotated", 0)),
             "skipped": int(counts.get("skipped", 0)), "fraction": round(fraction, 6)}
    if completed >= denominator:
        return LabelsReadyEventPayload(status="success", message=f"all {denominator} tasks "
                                       f"done", **ready)  # type: ignore[typeddict-item]
    if now < deadline:
        return None
    required = 1.0 if completion == "all" else float(min_fraction)
    if fraction >= required:
        return LabelsReadyEventPayload(
            status="partial", message=f"deadline passed with {completed}/{denominator} tasks "
            f"done (required {required:.0%})", **ready)  # type: ignore[typeddict-item]
    if on_timeout == "continue":
        return LabelsReadyEventPayload(
            status="partial", message=f"deadline passed with only {completed}/{denominator} "
            f"tasks done (required {required:.0%}); going on with what is done",
            **ready)  # type: ignore[typeddict-item]
    return LabelsErrorEventPayload(
        status="error", error_type="timeout",
        error=f"deadline {deadline.isoformat()} passed with {completed}/{denominator} tasks "
        f"done; {required:.0%} required", **common)  # type: ignore[typeddict-item]


class LabelsReadyTrigger(BaseTrigger):
    """Wait until a round's Label Studio tasks are done, or its absolute deadline passes.

    :param label_studio_conn_id: the Airflow connection of the service (read asynchronously).
    :param project_id: the Label Studio project.
    :param dag_id: the round's DAG id (task data key ``hitl_dag_id``).
    :param run_id: the round's run id (task data key ``hitl_run_id``).
    :param deadline: absolute deadline (ISO text, datetime or POSIX time).
    :param expected: tasks the submit step recorded (``None``: count what the service has).
    :param completion: ``all`` or ``fraction``.
    :param min_fraction: share required with ``fraction``.
    :param on_timeout: ``continue`` or ``fail`` below the required share at the deadline.
    :param poke_interval: seconds between polls.
    :param max_backoff: longest sleep after consecutive errors.
    """

    def __init__(
        self,
        *,
        label_studio_conn_id: str,
        project_id: int,
        dag_id: str,
        run_id: str,
        deadline: datetime | str | float,
        expected: int | None = None,
        completion: Completion = "all",
        min_fraction: float = 1.0,
        on_timeout: OnTimeout = "fail",
        poke_interval: float = 30.0,
        max_backoff: float = 300.0,
        **kwargs: Any,
    ) -> None:
        # Extra kwargs: tolerate arguments that older serialized triggers still carry.
        super().__init__()
        self.label_studio_conn_id = label_studio_conn_id
        self.project_id = int(project_id)
        self.dag_id = dag_id
        self.run_id = run_id
        self.deadline = to_deadline(deadline)
        self.expected = None if expected is None else int(expected)
        self.completion = completion
        self.min_fraction = float(min_fraction)
        self.on_timeout = on_timeout
        self.poke_interval = float(poke_interval)
        self.max_backoff = float(max_backoff)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "label_studio_conn_id": self.label_studio_conn_id,
                "project_id": self.project_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "deadline": self.deadline.isoformat(),
                "expected": self.expected,
                "completion": self.completion,
                "min_fraction": self.min_fraction,
                "on_timeout": self.on_timeout,
                "poke_interval": self.poke_interval,
                "max_backoff": self.max_backoff,
            },
        )

    # -- branches: each returns an event (terminal) or None ---------------------------------
    def _check_counts(self, counts: dict[str, int]) -> dict | None:
        return decide(counts, expected=self.expected, completion=self.completion,
                      min_fraction=self.min_fraction, on_timeout=self.on_timeout,
                      now=datetime.now(timezone.utc), deadline=self.deadline)

    def _check_error(self, exc: Exception) -> dict | None:
        from hitl_plugin.labeling.client import LabelStudioError

        status = exc.status if isinstance(exc, LabelStudioError) else None
        error_type: ErrorType | None = None
        if status in (401, 403):
            error_type = "auth"
        elif status == 404:
            error_type = "not_found"
        elif not isinstance(exc, LabelStudioError) or not exc.transient:
            error_type = "config"  # no usable connection, or a request the service refuses
        elif datetime.now(timezone.utc) >= self.deadline:
            error_type = "service_unavailable"
        if error_type is None:
            return None
        what = {
            "auth": "Label Studio refused the API token of connection "
                    f"{self.label_studio_conn_id!r}",
            "not_found": f"Label Studio project {self.project_id} was not found",
            "config": f"Label Studio connection {self.label_studio_conn_id!r} or request is "
                      "not usable",
            "service_unavailable": "Label Studio stayed unreachable until the deadline "
                                   f"{self.deadline.isoformat()}",
        }[error_type]
        return LabelsErrorEventPayload(status="error", error_type=error_type,
                                       error=f"{what}: {exc}", total=self.expected or 0,
                                       completed=0, deadline=self.deadline.isoformat())

    def _sleep_seconds(self, errors: int) -> float:
        delay = self.poke_interval
        if errors:
            delay = min(self.max_backoff, self.poke_interval * 2 ** min(errors, 16))
        # Wake at the deadline to end promptly (and to fail a service that stays down).
        remaining = (self.deadline - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, min(delay, remaining + 0.05)) if remaining > 0 else delay

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from hitl_plugin.hooks.label_studio import LabelStudioHook
        from hitl_plugin.labeling.client import LabelStudioError, round_counts

        client = None
        errors = 0
        try:
            while True:
                if client is None:
                    try:
                        hook = LabelStudioHook(self.label_studio_conn_id, retries=1)
                        client = await hook.aget_client()
                    except Exception as exc:  # a missing or incomplete connection
                        yield TriggerEvent(self._check_error(exc))
                        return
                try:
                    counts = await round_counts(client, self.project_id, self.dag_id,
                                                self.run_id)
                    errors = 0
                    event = self._check_counts(counts)
                    if event is None:
                        self.log.info("Round %s: %s/%s tasks done", self.run_id,
                                 counts["completed"], max(counts["total"], self.expected or 0))
                except (LabelStudioError, ValueError) as exc:
                    errors += 1
                    self.log.warning("Polling Label Studio failed (%s in a row): %s", errors, exc)
                    event = self._check_error(exc)
                if event is not None:
                    yield TriggerEvent(event)
                    return
                await asyncio.sleep(self._sleep_seconds(errors))
        finally:
            if client is not None:
                await client.aclose()


def deadline_after(seconds: float, now: datetime | None = None) -> datetime:
    """``now + seconds`` as an aware UTC datetime."""
    return (now or datetime.now(timezone.utc)) + timedelta(seconds=float(seconds))
