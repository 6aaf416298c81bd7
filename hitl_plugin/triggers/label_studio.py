"""Deferrable wait for a labeling round: :class:`LabelsReadyTrigger` runs in the triggerer.

It polls Label Studio with server-side filtered COUNT queries (total, annotated, skipped-only
tasks of the round), never downloading the tasks, and ends with one typed event
(``success``, ``partial`` or ``error``) decided by the completion policy of
:mod:`hitl_plugin.labeling.wait`, the one the sensor's first poke applies too. Given
``warn_at``, it ends early once with a ``deadline_near`` event when that time passes with
tasks left: the sensor tells people (``notifications``) and defers again without it. The
class path
``hitl_plugin.triggers.label_studio.LabelsReadyTrigger`` is kept: deferred waits store it.

Its state is JSON (:meth:`LabelsReadyTrigger.serialize`), including the absolute deadline, so a
restarted triggerer resumes with the same deadline. It sleeps once per loop, also after errors
(with a capped backoff), and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from hitl_plugin.labeling.wait import (
    Completion,
    LabelsDeadlineNearEventPayload,
    LabelsErrorEventPayload,
    LabelsReadyEventPayload,
    OnTimeout,
    deadline_after,
    decide,
    error_event,
    near_deadline,
    to_deadline,
)

# Re-exported: the sensor and older code import these names from here.
__all__ = ["LabelsDeadlineNearEventPayload", "LabelsErrorEventPayload",
           "LabelsReadyEventPayload", "LabelsReadyTrigger", "deadline_after", "decide",
           "to_deadline"]


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
    :param annotators: the most people a task of the round needs (``labeling.annotators_per_task``
        with overlap; 1 otherwise, and for triggers serialized before it existed).
    :param warn_at: absolute time after which, with tasks left, the trigger ends early with a
        ``deadline_near`` event (the sensor tells people, then defers again without it);
        None: no warning (also for triggers serialized before it existed).
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
        annotators: int = 1,
        warn_at: datetime | str | float | None = None,
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
        self.annotators = int(annotators)
        self.warn_at = None if warn_at is None else to_deadline(warn_at)

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
                "annotators": self.annotators,
                "warn_at": self.warn_at.isoformat() if self.warn_at is not None else None,
            },
        )

    # -- branches: each returns an event (terminal) or None ---------------------------------
    def _check_counts(self, counts: dict[str, int]) -> dict | None:
        now = datetime.now(timezone.utc)
        event = decide(counts, expected=self.expected, completion=self.completion,
                       min_fraction=self.min_fraction, on_timeout=self.on_timeout,
                       now=now, deadline=self.deadline)
        if event is None:  # not over: maybe time to warn (then the sensor defers again)
            return near_deadline(counts, expected=self.expected, warn=self.warn_at, now=now,
                                 deadline=self.deadline)
        return event

    def _check_error(self, exc: Exception) -> dict | None:
        return error_event(exc, conn_id=self.label_studio_conn_id, project_id=self.project_id,
                           deadline=self.deadline, expected=self.expected)

    def _sleep_seconds(self, errors: int) -> float:
        delay = self.poke_interval
        if errors:
            delay = min(self.max_backoff, self.poke_interval * 2 ** min(errors, 16))
        # Wake at the deadline to end promptly (and to fail a service that stays down), and
        # at the warning time to warn on time.
        now = datetime.now(timezone.utc)
        remaining = (self.deadline - now).total_seconds()
        if self.warn_at is not None and self.warn_at > now:
            remaining = min(remaining, (self.warn_at - now).total_seconds())
        return max(0.0, min(delay, remaining + 0.05)) if remaining > 0 else delay

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from hitl_plugin.exceptions import LabelStudioError
        from hitl_plugin.hooks.label_studio import LabelStudioHook
        from hitl_plugin.labeling.client import round_counts

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
                                                self.run_id, self.annotators)
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
