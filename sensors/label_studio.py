"""Deferrable sensor: wait until people have labeled a round's tasks in Label Studio."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from hitl_plugin.operators.base import HitlTaskMixin
from hitl_plugin.operators.links import LabelStudioProjectLink

from hitl_plugin.exceptions import LabelsNotReadyError

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import WaitResult
    from hitl_plugin.steps import WaitPlan

__all__ = ["LabelsNotReadyError", "LabelsReadySensor"]


class LabelsReadySensor(HitlTaskMixin, BaseSensorOperator):
    """Wait for a labeling round; poke once, then defer to :class:`LabelsReadyTrigger`.

    The settings and the absolute deadline come from :func:`hitl_plugin.steps.plan_wait`
    (``now + timeout`` at the first try, kept by automatic retries of the same try series; a
    manual clear starts a new one); each poke is :func:`hitl_plugin.steps.check_wait`.
    Returns ``{"project_id", "total", "completed", "annotated", "skipped", "fraction",
    "complete", "deadline"}``.

    Notifications (``notifications`` in the config, :mod:`hitl_plugin.notify`): when the
    first poke finds the round not done, ``labeling_ready`` (once per round); when
    ``notifications.near_deadline_hours`` are left with tasks not done, ``deadline_near``
    (once per deadline): the trigger ends early for it, the sensor sends it and defers again.

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
    operator_extra_links = (LabelStudioProjectLink(),)

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
        self.config_path = self._checked_config_path(config_path, required=False)
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
        self._plan: WaitPlan | None = None
        self._round: Any = None
        self._ls_url: str | None = None

    def _make_plan(self, context: Context) -> WaitPlan:
        from hitl_plugin import steps
        from hitl_plugin.config import COMPLETIONS, ON_TIMEOUT
        from hitl_plugin.templated import blank, optional_choice, optional_fraction

        rnd = self.round(context)
        if self.round_dag_id or self.round_run_id:
            rnd = steps.Round(rnd.config, rnd.root, self.round_dag_id or rnd.dag_id,
                              self.round_run_id or rnd.run_id)
        plan = steps.plan_wait(
            rnd, task_id=self.task_id, submissions=self.submissions,
            project_id=None if blank(self.project_id) else self.project_id,
            completion=optional_choice(self.completion, "completion", COMPLETIONS),
            min_fraction=optional_fraction(self.min_fraction, "min_fraction"),
            on_timeout=optional_choice(self.on_timeout, "on_timeout", ON_TIMEOUT),
            timeout_s=self.wait_timeout,
            poke_interval=self.poke_interval if self.poke_interval_given else None,
            try_series=getattr(context.get("ti"), "max_tries", None))
        self.poke_interval = plan["poke_interval"]
        self._round = rnd
        if plan.get("warn_at"):
            from hitl_plugin.notify import already_sent

            if already_sent(rnd, "deadline_near", key=plan["deadline"]):
                plan["warn_at"] = None
        return plan

    def _tell(self, context: Context, event: dict | None) -> None:
        """Send ``labeling_ready`` (``event`` None) or ``deadline_near``, once."""
        from hitl_plugin import notify
        from hitl_plugin.labeling.tasks import project_url

        plan, rnd = self._plan, self._round
        if plan is None or rnd is None:
            return
        url = project_url(self._ls_url, plan["project_id"]) if self._ls_url else None
        if event is None:
            message = notify.labeling_ready(
                dag_id=plan["dag_id"], run_id=plan["run_id"], project_id=plan["project_id"],
                tasks=plan["expected"], deadline=plan["deadline"], url=url)
            key = None
        else:
            message = notify.deadline_near(
                dag_id=plan["dag_id"], run_id=plan["run_id"], project_id=plan["project_id"],
                total=event["total"], completed=event["completed"], deadline=plan["deadline"],
                url=url)
            key = plan["deadline"]
            plan["warn_at"] = None  # warned: wait on without it
        notify.send_once(rnd, message, context, rnd.config.notifications.notifiers, key=key)

    def _check(self, plan: WaitPlan) -> dict | None:
        from hitl_plugin import steps

        with self.label_studio(self.label_studio_conn_id, retries=2) as client:
            self._ls_url = client.url
            return steps.check_wait(client, plan)

    def poke(self, context: Context) -> Any:
        from airflow.sdk import PokeReturnValue

        from hitl_plugin import steps
        from hitl_plugin.exceptions import LabelStudioError

        if self._plan is None:
            self._plan = self._make_plan(context)
        try:
            event = self._check(self._plan)
        except LabelStudioError as exc:  # the trigger's rule: wait out what waiting may fix
            event = steps.wait_error(exc, self._plan, conn_id=self.label_studio_conn_id)
            if event is None:
                self.log.warning("Polling Label Studio failed (%s); polling on", exc)
                return False
        if event is None or event["status"] == "deadline_near":
            self._tell(context, None)  # once: the round's tasks are ready for people
            if event is not None:
                self._tell(context, event)
            return False
        return PokeReturnValue(True, self._result(event, self._plan["project_id"]))

    def execute(self, context: Context) -> Any:
        self._plan = plan = self._make_plan(context)
        if not self.deferrable:
            return super().execute(context)
        from hitl_plugin.exceptions import LabelStudioError

        try:
            event = self._check(plan)
        except LabelStudioError as exc:
            if not exc.transient:
                raise LabelsNotReadyError(f"Label Studio refused the first poke: {exc}") from None
            # The trigger rides out an outage (with backoff) until the deadline.
            self.log.warning("First poke failed (%s); deferring anyway", exc)
            event = None
        near = event is not None and event["status"] == "deadline_near"
        if event is not None and not near:
            return self._result(event, plan["project_id"])
        self._tell(context, None)  # the round's tasks are ready for people
        if near:
            self._tell(context, event)
        self._defer(plan)

    def _defer(self, plan: WaitPlan) -> None:
        from hitl_plugin.labeling.wait import to_deadline
        from hitl_plugin.triggers.label_studio import LabelsReadyTrigger

        deadline = to_deadline(plan["deadline"])
        remaining = (deadline - datetime.now(timezone.utc)).total_seconds()
        self.log.info("Deferring until the round is done or %s", plan["deadline"])
        self.defer(
            trigger=LabelsReadyTrigger(
                label_studio_conn_id=self.label_studio_conn_id, project_id=plan["project_id"],
                dag_id=plan["dag_id"], run_id=plan["run_id"], deadline=deadline,
                expected=plan["expected"], completion=plan["completion"],
                min_fraction=plan["min_fraction"], on_timeout=plan["on_timeout"],
                poke_interval=plan["poke_interval"], annotators=plan["annotators"],
                warn_at=plan.get("warn_at")),
            method_name="execute_complete",
            # A safety net only: the trigger itself ends at the deadline.
            timeout=timedelta(seconds=max(0.0, remaining)
                              + max(600.0, 4 * plan["poke_interval"])),
            kwargs={"project_id": plan["project_id"], "url": self._ls_url},
        )

    def execute_complete(self, context: Context, event: dict[str, Any],
                         project_id: int | None = None, url: str | None = None) -> WaitResult:
        """Resume after the trigger: raise on an error event, else return the counts; after a
        ``deadline_near`` event, tell people and defer again (same absolute deadline)."""
        if isinstance(event, dict) and event.get("status") == "deadline_near":
            self._plan = plan = self._make_plan(context)
            self._ls_url = url
            self._tell(context, event)
            self._defer(plan)
        return self._result(event, project_id)

    def _result(self, event: dict[str, Any], project_id: int | None) -> WaitResult:
        from hitl_plugin import steps

        return steps.finish_wait(event, project_id)
