"""Deferrable sensor: wait until people have labeled a round's tasks in Label Studio."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException
from hitl_plugin.operators._args import blank

if TYPE_CHECKING:
    from airflow.sdk import Context

DEADLINE_FILE = "wait_deadline.json"


class LabelsNotReadyError(AirflowException):
    """The labeling round did not complete as required (deadline, service down, auth...)."""


class LabelsReadySensor(BaseSensorOperator):
    """Wait for a labeling round; poke once, then defer to :class:`LabelsReadyTrigger`.

    The deadline is absolute: ``now + timeout`` at the first try, recorded in the round folder
    (``wait_deadline.json``) and reused by automatic retries of the same try series (a manual
    clear starts a new one). Returns ``{"project_id", "total", "completed", "annotated",
    "skipped", "fraction", "complete", "deadline"}``.

    :param config_path: the pipeline YAML (defaults for the policy, storage root).
    :param submissions: the submit step's results (their ``project_id`` and counts).
    :param project_id: the Label Studio project, when no ``submissions`` are given.
    :param round_dag_id: the round's DAG id (default: this DAG).
    :param round_run_id: the round's run id (default: this run).
    :param completion: ``all`` or ``fraction`` (default: ``labeling.completion``).
    :param min_fraction: share required with ``fraction`` (default: ``labeling.min_fraction``).
    :param timeout: seconds (or timedelta) from the first try to the deadline (default:
        ``labeling.timeout_hours``).
    :param on_timeout: ``continue`` or ``fail`` below the required share at the deadline.
    :param poke_interval: seconds between polls (default: ``labeling.poke_interval``).
    :param deferrable: wait in the triggerer (True) or poke in a worker slot (False).
    :param label_studio_conn_id: the Label Studio connection.
    """

    template_fields: Sequence[str] = (
        "config_path", "submissions", "project_id", "round_dag_id", "round_run_id",
        "completion", "min_fraction", "on_timeout", "label_studio_conn_id")

    def __init__(
        self,
        *,
        config_path: str | None = None,
        submissions: Any = None,
        project_id: int | str | None = None,
        round_dag_id: str | None = None,
        round_run_id: str | None = None,
        completion: str | None = None,
        min_fraction: float | str | None = None,
        timeout: float | timedelta | None = None,
        on_timeout: str | None = None,
        poke_interval: float | timedelta | None = None,
        deferrable: bool = True,
        label_studio_conn_id: str = "label_studio_default",
        **kwargs: Any,
    ) -> None:
        if timeout is not None:
            kwargs["timeout"] = timeout
        if poke_interval is not None:
            kwargs["poke_interval"] = poke_interval
        super().__init__(**kwargs)
        if config_path is None and submissions is None and project_id is None:
            raise ValueError("LabelsReadySensor needs config_path, submissions or project_id")
        self.config_path = config_path
        self.submissions = submissions
        self.project_id = project_id
        self.round_dag_id = round_dag_id
        self.round_run_id = round_run_id
        self.completion = completion
        self.min_fraction = min_fraction
        self.wait_timeout = None if timeout is None else self.timeout
        self.on_timeout = on_timeout
        self.poke_interval_given = poke_interval is not None
        self.deferrable = deferrable
        self.label_studio_conn_id = label_studio_conn_id
        self._state: dict[str, Any] | None = None

    # -- settings ---------------------------------------------------------------------------
    def _settings(self, context: Context) -> dict[str, Any]:
        from hitl_plugin.config import LabelingConfig, load_config, storage_root
        from hitl_plugin.labeling.submit import project_and_expected
        from hitl_plugin.paths import Layout

        config = load_config(self.config_path) if not blank(self.config_path) else None
        lab = config.labeling if config is not None else LabelingConfig()
        completion = lab.completion if blank(self.completion) else str(self.completion)
        if completion not in ("all", "fraction"):
            raise AirflowException(f"completion must be 'all' or 'fraction', got {completion!r}")
        min_fraction = (lab.min_fraction if blank(self.min_fraction)
                        else float(self.min_fraction))  # type: ignore[arg-type]
        if not 0.0 < min_fraction <= 1.0:
            raise AirflowException(f"min_fraction must be in (0, 1], got {min_fraction}")
        on_timeout = lab.on_timeout if blank(self.on_timeout) else str(self.on_timeout)
        if on_timeout not in ("continue", "fail"):
            raise AirflowException(f"on_timeout must be 'continue' or 'fail', got {on_timeout!r}")
        dag_id = self.round_dag_id or context["dag"].dag_id
        run_id = self.round_run_id or context["run_id"]
        try:
            project_id, expected = project_and_expected(self.submissions, self.project_id)
        except ValueError as exc:
            raise AirflowException(str(exc)) from None
        seconds = (self.wait_timeout if self.wait_timeout is not None
                   else lab.timeout_hours * 3600.0)
        if not self.poke_interval_given:
            self.poke_interval = lab.poke_interval
        round_dir = Layout.at(storage_root(config)).round_dir(dag_id, run_id)
        deadline = self._deadline(round_dir, seconds, context)
        return {"project_id": project_id, "expected": expected, "dag_id": dag_id,
                "run_id": run_id, "completion": completion, "min_fraction": min_fraction,
                "on_timeout": on_timeout, "deadline": deadline}

    def _deadline(self, round_dir, seconds: float, context: Context) -> datetime:
        """``now + seconds``, kept across automatic retries (same ``max_tries``)."""
        from hitl_plugin.schemas import write_json_atomic
        from hitl_plugin.triggers.label_studio import deadline_after, to_deadline

        path = round_dir / f"{self.task_id}.{DEADLINE_FILE}"
        series = getattr(context.get("ti"), "max_tries", None)
        try:
            saved = json.loads(path.read_text())
            if saved.get("max_tries") == series and saved.get("timeout_s") == seconds:
                return to_deadline(saved["deadline"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        deadline = deadline_after(seconds)
        write_json_atomic(path, {"deadline": deadline.isoformat(), "timeout_s": seconds,
                                 "max_tries": series})
        return deadline

    # -- poking -----------------------------------------------------------------------------
    def _poll(self, state: dict[str, Any]) -> dict | None:
        from hitl_plugin.hooks.label_studio import LabelStudioHook
        from hitl_plugin.labeling.client import round_counts_sync
        from hitl_plugin.triggers.label_studio import decide

        with LabelStudioHook(self.label_studio_conn_id, retries=2).get_client() as client:
            counts = round_counts_sync(client, state["project_id"], state["dag_id"],
                                       state["run_id"])
        self.log.info("Round %s: %s/%s tasks done (%s annotated, %s skipped)", state["run_id"],
                      counts["completed"], max(counts["total"], state["expected"] or 0),
                      counts["annotated"], counts["skipped"])
        return decide(counts, expected=state["expected"], completion=state["completion"],
                      min_fraction=state["min_fraction"], on_timeout=state["on_timeout"],
                      now=datetime.now(timezone.utc), deadline=state["deadline"])

    def poke(self, context: Context) -> Any:
        from airflow.sdk import PokeReturnValue

        if self._state is None:
            self._state = self._settings(context)
        event = self._poll(self._state)
        if event is None:
            return False
        return PokeReturnValue(True, self._result(event, self._state["project_id"]))

    def execute(self, context: Context) -> Any:
        self._state = self._settings(context)
        if not self.deferrable:
            return super().execute(context)
        from hitl_plugin.labeling.client import LabelStudioError
        from hitl_plugin.triggers.label_studio import LabelsReadyTrigger

        state = self._state
        try:
            event = self._poll(state)
        except LabelStudioError as exc:
            if not exc.transient:
                raise AirflowException(f"Label Studio refused the first poke: {exc}") from None
            # The trigger rides out an outage (with backoff) until the deadline.
            self.log.warning("First poke failed (%s); deferring anyway", exc)
            event = None
        if event is not None:
            return self._result(event, state["project_id"])

        remaining = (state["deadline"] - datetime.now(timezone.utc)).total_seconds()
        self.log.info("Deferring until the round is done or %s", state["deadline"].isoformat())
        self.defer(
            trigger=LabelsReadyTrigger(
                label_studio_conn_id=self.label_studio_conn_id, project_id=state["project_id"],
                dag_id=state["dag_id"], run_id=state["run_id"],
                deadline=state["deadline"], expected=state["expected"],
                completion=state["completion"], min_fraction=state["min_fraction"],
                on_timeout=state["on_timeout"], poke_interval=self.poke_interval),
            method_name="execute_complete",
            # A safety net only: the trigger itself ends at the deadline.
            timeout=timedelta(seconds=max(0.0, remaining) + max(600.0, 4 * self.poke_interval)),
            kwargs={"project_id": state["project_id"]},
        )

    def execute_complete(self, context: Context, event: dict[str, Any],
                         project_id: int | None = None) -> dict:
        """Resume after the trigger: raise on an error event, else return the counts."""
        return self._result(event, project_id)

    def _result(self, event: dict[str, Any], project_id: int | None) -> dict:
        if not isinstance(event, dict) or event.get("status") not in ("success", "partial"):
            kind = event.get("error_type", "unknown") if isinstance(event, dict) else "unknown"
            error = event.get("error", event) if isinstance(event, dict) else event
            raise LabelsNotReadyError(f"Labeling round not ready ({kind}): {error}")
        self.log.info("%s", event.get("message", ""))
        return {
            "project_id": project_id,
            "total": event["total"],
            "completed": event["completed"],
            "annotated": event["annotated"],
            "skipped": event["skipped"],
            "fraction": event["fraction"],
            "complete": event["status"] == "success",
            "deadline": event["deadline"],
        }
