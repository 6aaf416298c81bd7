"""Tell people when they must act, through the Airflow notifiers named in the config.

The moments (``notifications.notifiers[].events``):

- ``approval_requested``: a checkpoint awaits approval (``gate.require_approval``); sent by
  the approval task itself (Airflow's ``ApprovalOperator(notifiers=...)``);
- ``labeling_ready``: the round's labeling tasks are in Label Studio (the wait starts);
- ``deadline_near``: the labeling wait has ``notifications.near_deadline_hours`` left and
  tasks are not done (the trigger wakes the sensor once for it);
- ``round_failed``: a round failed (the DAG's ``on_failure_callback``).

Each notifier is built anew from its config for every message (Airflow renders a notifier's
templated fields in place, once), with the task's context plus ``hitl``: the moment as a
:class:`HitlEvent` (``{{ hitl.subject }}``, ``{{ hitl.message }}``, ``{{ hitl.url }}``). A
notifier that fails is logged and never fails the round: a mail server being down must not
stop people's work. ``labeling_ready`` and ``deadline_near`` are sent once per round (and
deadline), recorded under ``rounds/<dag_id>/<run_id>/notifications/``.

This module is the Airflow side of notifications (it subclasses ``BaseNotifier``); the
message texts are plain functions of plain values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypedDict

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from hitl_plugin.config import NotifierConfig
    from hitl_plugin.steps import Round

log = logging.getLogger(__name__)

__all__ = ["HitlEvent", "HitlNotifier", "already_sent", "approval_requested", "build",
           "deadline_near", "labeling_ready", "round_failed", "send", "send_once"]


class HitlEvent(TypedDict):
    """One moment to tell people about; notifier templates see it as ``hitl``."""

    event: str
    dag_id: str
    run_id: str | None
    subject: str
    message: str
    #: where to act (the approval's page, the Label Studio project, the failed run); or None
    url: str | None
    details: dict[str, Any]


def _event(event: str, *, dag_id: str, run_id: str | None, subject: str, message: str,
           url: str | None = None, **details: Any) -> HitlEvent:
    return HitlEvent(event=event, dag_id=dag_id, run_id=run_id, subject=f"[hitl] {subject}",
                     message=message, url=url, details=details)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(seconds, 0) / 60:.0f} min"


# -- the messages -----------------------------------------------------------------------------


def approval_requested(*, dag_id: str, run_id: str | None, subject: str, body: str,
                       url: str | None, deadline: datetime | None,
                       on_timeout: str | None = None) -> HitlEvent:
    """A checkpoint awaits approval: the approval's own subject and body, and where to answer."""
    lines = [subject, "", body or ""]
    if url:
        lines += ["", f"Answer in Airflow: {url}"]
    if deadline is not None:
        lines += ["", f"Answer by {deadline.isoformat(timespec='minutes')}"
                  + (f"; no answer counts as {on_timeout.capitalize()}." if on_timeout else ".")]
    return _event("approval_requested", dag_id=dag_id, run_id=run_id,
                  subject=f"{dag_id}: a checkpoint awaits your approval",
                  message="\n".join(lines), url=url,
                  deadline=deadline.isoformat() if deadline else None)


def labeling_ready(*, dag_id: str, run_id: str, project_id: int, tasks: int | None,
                   deadline: str, url: str | None) -> HitlEvent:
    """The round's labeling tasks are in Label Studio."""
    count = f"{tasks} labeling task(s)" if tasks is not None else "Labeling tasks"
    message = (f"{count} of round {run_id} are ready in Label Studio project {project_id}"
               + (f": {url}" if url else "") + f". Deadline: {deadline}.")
    return _event("labeling_ready", dag_id=dag_id, run_id=run_id,
                  subject=f"{dag_id}: {count} ready", message=message, url=url,
                  project_id=project_id, tasks=tasks, deadline=deadline)


def deadline_near(*, dag_id: str, run_id: str, project_id: int, total: int, completed: int,
                  deadline: str, url: str | None, now: datetime | None = None) -> HitlEvent:
    """The labeling deadline is near with tasks left."""
    from hitl_plugin.labeling.wait import to_deadline

    left = (to_deadline(deadline) - (now or datetime.now(timezone.utc))).total_seconds()
    remaining = max(total - completed, 0)
    message = (f"Round {run_id}: {remaining} of {total} labeling task(s) are not done and the "
               f"deadline {deadline} is in {_hours(left)} (Label Studio project {project_id}"
               + (f": {url}" if url else "") + ").")
    return _event("deadline_near", dag_id=dag_id, run_id=run_id,
                  subject=f"{dag_id}: {remaining} labeling task(s) left, deadline in "
                  f"{_hours(left)}", message=message, url=url, project_id=project_id,
                  total=total, completed=completed, deadline=deadline)


def round_failed(*, dag_id: str, run_id: str | None, task_id: str | None, reason: str | None,
                 url: str | None) -> HitlEvent:
    """A round failed."""
    at = f" at task {task_id}" if task_id else ""
    message = (f"Round {run_id} of {dag_id} failed{at} ({reason or 'failed'})."
               + (f" See {url}" if url else ""))
    return _event("round_failed", dag_id=dag_id, run_id=run_id,
                  subject=f"{dag_id}: round {run_id} failed{at}", message=message, url=url,
                  task_id=task_id, reason=reason)


# -- sending ----------------------------------------------------------------------------------


def build(spec: NotifierConfig) -> BaseNotifier:
    """A fresh notifier from its config (the class was checked when the config loaded)."""
    from hitl_plugin.config import notifier_class

    return notifier_class(spec.class_path)(**spec.args)


def send(event: HitlEvent, context: Mapping[str, Any], notifiers: Sequence[NotifierConfig]
         ) -> int:
    """Send ``event`` to the notifiers that take it; return how many succeeded.

    Each gets ``context`` plus ``hitl`` (the event). A failure is logged, never raised.
    """
    sent = 0
    for spec in notifiers:
        if not spec.takes(event["event"]):
            continue
        try:
            _deliver(build(spec), {**context, "hitl": event})
            sent += 1
        except Exception as exc:  # a notifier must never fail the round
            log.warning("Notifier %s failed to send %s: %s: %s", spec.class_path,
                        event["event"], type(exc).__name__, exc)
    if sent:
        log.info("Sent %s to %s notifier(s): %s", event["event"], sent, event["subject"])
    return sent


def _deliver(notifier: BaseNotifier, context: dict[str, Any]) -> None:
    dag = context.get("dag")
    if dag is None or hasattr(dag, "get_template_env"):
        notifier(context)
        return
    # dag.test() gives DAG callbacks the scheduler's DAG, which has no template environment
    # (the DAG processor gives the parsed one): render with the default environment.
    notifier.render_template_fields(context, jinja_env=notifier.get_template_env())
    notifier.notify(context)


def send_once(rnd: Round, event: HitlEvent, context: Mapping[str, Any],
              notifiers: Sequence[NotifierConfig], *, key: str | None = None) -> bool:
    """Send ``event`` unless this round already sent it with the same ``key``.

    The record (``rounds/<dag_id>/<run_id>/notifications/<event>.json``) is written after
    sending, so a retry of the task does not tell people twice; ``key`` (the wait's deadline)
    lets a new deadline after a manual clear be announced again.

    :return: whether it was sent now.
    """
    import json

    from hitl_plugin.schemas import write_json_atomic

    takers = [n for n in notifiers if n.takes(event["event"])]
    if not takers:
        return False
    path = rnd.paths.notified(event["event"])
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("key") == key:
            log.info("%s was already sent for round %s", event["event"], rnd.run_id)
            return False
    except (OSError, ValueError, AttributeError):
        pass
    sent = send(event, context, takers)
    write_json_atomic(path, {"event": event["event"], "key": key, "sent": sent,
                             "of": len(takers), "subject": event["subject"],
                             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return True


def already_sent(rnd: Round, event: str, *, key: str | None = None) -> bool:
    """Whether :func:`send_once` already sent ``event`` (with ``key``) for this round."""
    import json

    try:
        return json.loads(rnd.paths.notified(event).read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def _base_url() -> str | None:
    try:
        from airflow.configuration import conf

        return (conf.get("api", "base_url", fallback=None) or "").rstrip("/") or None
    except Exception:
        return None


def _approval_event(context: Mapping[str, Any]) -> HitlEvent:
    task = context["task"]
    ti = context.get("ti") or context.get("task_instance")
    url = None
    try:
        url = task.generate_link_to_ui_from_context(context=context)
    except Exception:  # no [api] base_url configured
        url = None
    # the operator's own absolute deadline, set just before it calls its notifiers
    when = (getattr(task, "hitl_summary_extra", None) or {}).get("timeout_datetime")
    timeout = getattr(task, "response_timeout", None)
    deadline = datetime.fromisoformat(when) if when else (
        datetime.now(timezone.utc) + timeout if timeout else None)
    defaults = getattr(task, "defaults", None) or []
    return approval_requested(
        dag_id=getattr(ti, "dag_id", None) or context["dag"].dag_id,
        run_id=getattr(ti, "run_id", None) or context.get("run_id"), subject=task.subject,
        body=task.body, url=url, deadline=deadline, on_timeout=defaults[0] if defaults else None)


def _failure_event(context: Mapping[str, Any]) -> HitlEvent:
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or "?"
    run_id = getattr(ti, "run_id", None) or context.get("run_id")
    base = _base_url()
    url = f"{base}/dags/{dag_id}/runs/{run_id}" if base and run_id else None
    return round_failed(dag_id=dag_id, run_id=run_id, task_id=getattr(ti, "task_id", None),
                        reason=context.get("reason"), url=url)


_FROM_CONTEXT = {"approval_requested": _approval_event, "round_failed": _failure_event}


class HitlNotifier(BaseNotifier):
    """Send one moment to the config's notifiers, its text built from Airflow's context.

    Given to ``ApprovalOperator(notifiers=...)`` (``approval_requested``: the approval
    task's subject, body and answer page) and as the DAG's ``on_failure_callback``
    (``round_failed``: the run and the task that failed).

    :param event: ``approval_requested`` or ``round_failed``.
    :param notifiers: the notifier configs to send it to.
    """

    def __init__(self, *, event: str, notifiers: Sequence[NotifierConfig]) -> None:
        super().__init__()
        if event not in _FROM_CONTEXT:
            raise ValueError(f"HitlNotifier sends {sorted(_FROM_CONTEXT)}, not {event!r}")
        self.event = event
        self.notifiers = list(notifiers)

    def __call__(self, *args: Any) -> None:
        # Nothing of its own to render (the notifiers it sends to render themselves), so
        # straight to notify(): also with a context whose DAG has no template environment.
        self.notify(args[0] if len(args) == 1 else {"dag": args[0]})

    def notify(self, context: Any) -> None:
        try:
            event = _FROM_CONTEXT[self.event](context)
        except Exception as exc:  # never fail the task for a message
            log.warning("Could not build the %s message: %s: %s", self.event,
                        type(exc).__name__, exc)
            return
        send(event, context, self.notifiers)
