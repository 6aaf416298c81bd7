"""The wait for people, as plain Python: the completion policy and the absolute deadline.

:func:`decide` is the one rule the sensor's first poke and the trigger's loop both apply to
a round's counts (total, annotated, skipped-only tasks) and ends the wait with one typed
event:

- ``success``: every task is annotated or skipped;
- ``partial``: the absolute deadline passed and the completion policy says go on with what is
  done (share reached, or ``on_timeout="continue"``);
- ``error``: the deadline passed below the required share with ``on_timeout="fail"``
  (``timeout``), the service stayed unreachable until the deadline (``service_unavailable``),
  or it answered in a way waiting cannot fix (``auth``, ``not_found``, ``config``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal, TypedDict

from hitl_plugin.config import Completion, OnTimeout

ErrorType = Literal["timeout", "service_unavailable", "auth", "not_found", "config"]
__all__ = ["Completion", "ErrorType", "LabelsDeadlineNearEventPayload", "LabelsErrorEventPayload",
           "LabelsReadyEventPayload", "OnTimeout", "deadline_after", "decide", "error_event",
           "near_deadline", "to_deadline", "warn_at"]


class _LabelsProgress(TypedDict):
    """Where the labeling stands (:func:`_progress`), in an event that is not an error."""

    total: int
    completed: int
    annotated: int
    skipped: int
    fraction: float
    deadline: str
    message: str


class LabelsReadyEventPayload(_LabelsProgress):
    """The round may go on (``success``: all done; ``partial``: deadline passed)."""

    status: Literal["success", "partial"]


class LabelsErrorEventPayload(TypedDict):
    """The wait failed."""

    status: Literal["error"]
    error_type: ErrorType
    error: str
    total: int
    completed: int
    deadline: str


class LabelsDeadlineNearEventPayload(_LabelsProgress):
    """Not an end: the warning time passed with tasks left; the sensor tells people and
    waits on (``notifications.near_deadline_hours``)."""

    status: Literal["deadline_near"]


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
    ready = _progress(counts, expected, deadline)
    denominator, completed = ready["total"], ready["completed"]
    fraction = 1.0 if denominator == 0 else completed / denominator
    common = {k: ready[k] for k in ("total", "completed", "deadline")}
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


def _progress(counts: dict[str, int], expected: int | None, deadline: datetime) -> dict:
    """The counts an event carries: ``total`` is ``max(expected, total)`` (tasks that vanished
    from the service still count), ``fraction`` the share done (1.0 of nothing)."""
    total, completed = int(counts.get("total", 0)), int(counts.get("completed", 0))
    denominator = max(int(expected or 0), total)
    fraction = 1.0 if denominator == 0 else completed / denominator
    return {"total": denominator, "completed": completed,
            "annotated": int(counts.get("annotated", 0)),
            "skipped": int(counts.get("skipped", 0)), "fraction": round(fraction, 6),
            "deadline": deadline.isoformat()}


def deadline_after(seconds: float, now: datetime | None = None) -> datetime:
    """``now + seconds`` as an aware UTC datetime."""
    return (now or datetime.now(timezone.utc)) + timedelta(seconds=float(seconds))


def error_event(exc: Exception, *, conn_id: str, project_id: int, deadline: datetime,
                expected: int | None, now: datetime | None = None
                ) -> LabelsErrorEventPayload | None:
    """What a failed poll means: the event that ends the wait, or None to poll on.

    Errors that waiting may fix (no answer, 5xx, 429, an answer that is not a count) are
    waited out until the deadline, then ``service_unavailable``; a refused token (``auth``),
    a missing project (``not_found``) and a request the service refuses (``config``) end
    the wait at once.
    """
    from hitl_plugin.exceptions import LabelStudioError

    status = exc.status if isinstance(exc, LabelStudioError) else None
    error_type: ErrorType | None = None
    if status in (401, 403):
        error_type = "auth"
    elif status == 404:
        error_type = "not_found"
    elif not isinstance(exc, LabelStudioError) or not exc.transient:
        error_type = "config"  # no usable connection, or a request the service refuses
    elif (now or datetime.now(timezone.utc)) >= deadline:
        error_type = "service_unavailable"
    if error_type is None:
        return None
    what = {
        "auth": f"Label Studio refused the API token of connection {conn_id!r}",
        "not_found": f"Label Studio project {project_id} was not found",
        "config": f"Label Studio connection {conn_id!r} or request is not usable",
        "service_unavailable": "Label Studio stayed unreachable until the deadline "
                               f"{deadline.isoformat()}",
    }[error_type]
    return LabelsErrorEventPayload(status="error", error_type=error_type,
                                   error=f"{what}: {exc}", total=expected or 0,
                                   completed=0, deadline=deadline.isoformat())


def warn_at(deadline: datetime, *, timeout_s: float, near_s: float | None) -> datetime | None:
    """When to warn that the deadline is near: ``near_s`` before it, or None when there is
    no warning or the whole wait (``timeout_s``) is not longer than the warning window."""
    if not near_s or near_s >= timeout_s:
        return None
    return deadline - timedelta(seconds=float(near_s))


def near_deadline(counts: dict[str, int], *, expected: int | None, warn: datetime | None,
                  now: datetime, deadline: datetime) -> LabelsDeadlineNearEventPayload | None:
    """The warning event when ``warn`` has passed and tasks are left, else None.

    Apply it after :func:`decide` found the wait not over.
    """
    if warn is None or now < warn:
        return None
    progress = _progress(counts, expected, deadline)
    denominator, completed = progress["total"], progress["completed"]
    if completed >= denominator:
        return None
    return LabelsDeadlineNearEventPayload(
        status="deadline_near", message=f"{denominator - completed} of {denominator} tasks "
        f"left; deadline {deadline.isoformat()}", **progress)  # type: ignore[typeddict-item]
