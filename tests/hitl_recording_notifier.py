"""Airflow notifiers for the tests: a real ``BaseNotifier`` that appends each call to a JSON
lines file, and one that always fails. Named in test configs by import path
(``hitl_recording_notifier.RecordingNotifier``), with this folder on ``sys.path``."""

from __future__ import annotations

import json

from airflow.sdk.bases.notifier import BaseNotifier


class RecordingNotifier(BaseNotifier):
    """Append ``{"event", "subject", "message", "url", "dag_id", "run_id", "details"}`` per call;
    ``subject`` and ``message`` are templates rendered with the context (and ``hitl``)."""

    template_fields = ("subject", "message")

    def __init__(self, *, path: str, subject: str = "{{ hitl.subject }}",
                 message: str = "{{ hitl.message }}") -> None:
        super().__init__()
        if not isinstance(path, str):
            raise TypeError("path must be a file path")
        self.path = path
        self.subject = subject
        self.message = message

    def notify(self, context) -> None:
        hitl = context["hitl"]
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": hitl["event"], "subject": self.subject,
                                 "message": self.message, "url": hitl["url"],
                                 "dag_id": hitl["dag_id"], "run_id": hitl["run_id"],
                                 "details": hitl["details"]}, default=str) + "\n")


class FailingNotifier(BaseNotifier):
    """Fails every time (a mail server that is down)."""

    def __init__(self, *, reason: str = "mail server down") -> None:
        super().__init__()
        self.reason = reason

    def notify(self, context) -> None:
        raise ConnectionError(self.reason)


def read(path) -> list[dict]:
    """The calls recorded in ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
