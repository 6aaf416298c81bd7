"""The person's approval of a round's new checkpoint, before the gate.

``CheckpointApprovalOperator`` is Airflow's ``ApprovalOperator`` (the task waits in
``awaiting_input`` for an answer in the Required Actions page, then resumes) with two
changes for a training round:

- its text is written at run time from the config and the storage: the candidate's held-out
  metrics beside the promoted checkpoint's, and what Approve, Reject and no answer do
  (:func:`hitl_plugin.steps.approval_request`);
- a Reject skips nothing: the answer is the task's result, and the gate
  (:class:`~hitl_plugin.operators.model.PromoteModelOperator` with ``approval=``) applies
  ``gate.approval.on_reject``: keep the promoted checkpoint and go on, or end the round.
  (Airflow's own operator would skip the gate and, with it, the whole rest of the round.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from hitl_plugin.operators.base import HitlTaskMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["CheckpointApprovalOperator"]


class CheckpointApprovalOperator(HitlTaskMixin, ApprovalOperator):
    """Ask a person to approve the round's new checkpoint; return the answer.

    Returns ``{"chosen_options": ["Approve"] | ["Reject"], "approved": bool,
    "responded_by_user": {"id", "name"} | None, "responded_at": ISO text, "timed_out": bool}``
    (``timed_out``: nobody answered within ``response_timeout`` and Airflow applied
    ``defaults``). Give it ``retries=0``: a retry after a timeout would wait a whole second
    window.

    :param config_path: the pipeline YAML file.
    :param candidate: the train step's result (its ``metrics`` are shown).
    :param subject: the request's headline (default: from the config).
    :param body: the request's Markdown (default: from the config, see the module).
    Other arguments are ``ApprovalOperator``'s: ``response_timeout``, ``defaults``,
    ``assigned_users``, ``notifiers``.
    """

    template_fields: Sequence[str] = ("config_path", "candidate", "subject", "body")

    def __init__(self, *, config_path: str, candidate: Any, subject: str | None = None,
                 body: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("fail_on_reject"):
            raise ValueError("CheckpointApprovalOperator leaves a Reject to the gate "
                             "(gate.approval.on_reject); fail_on_reject is not supported")
        super().__init__(subject=subject or "", body=body, **kwargs)
        self.config_path = self._checked_config_path(config_path)
        self.candidate = candidate
        self._subject_given, self._body_given = bool(subject), body is not None

    def execute(self, context: Context) -> Any:
        from hitl_plugin import steps

        subject, body = steps.approval_request(self.round(context), candidate=self.candidate)
        self.subject = self.subject if self._subject_given else subject
        self.body = self.body if self._body_given else body
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume with the answer (or the timeout's default): validate it, skip nothing."""
        answer = HITLOperator.execute_complete(self, context=context, event=event)
        approved = answer["chosen_options"] == [self.APPROVE]
        extra = getattr(self, "hitl_summary_extra", None)  # providers-standard >= 1.15
        if isinstance(extra, dict):
            extra["approved"] = approved
        user = answer.get("responded_by_user")
        at = answer.get("responded_at")
        timed_out = bool(event.get("timedout"))
        self.log.info("Checkpoint %s by %s", "approved" if approved else "rejected",
                      (user or {}).get("name") or "nobody (the response timeout's default)")
        return {"chosen_options": list(answer["chosen_options"]), "approved": approved,
                "responded_by_user": dict(user) if user else None,
                "responded_at": at.isoformat() if hasattr(at, "isoformat") else at,
                "timed_out": timed_out}
