"""Operators that train, evaluate and gate the detector.

``YoloTrainOperator`` trains and then evaluates (one task: the evaluation needs the
checkpoint on the same machine, a GPU worker included, and is short next to training);
``PromoteModelOperator`` applies the gate. With ``gate.require_approval`` the DAG puts
:class:`~hitl_plugin.operators.approval.CheckpointApprovalOperator` (Airflow's
``ApprovalOperator``) between the two, and the gate applies the person's answer.

Nothing heavy is imported here: torch and Ultralytics load inside the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.skipmixin import SkipMixin
from hitl_plugin.operators.base import HitlOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import GateResult, TrainResult

__all__ = ["PromoteModelOperator", "YoloTrainOperator"]


class YoloTrainOperator(HitlOperator):
    """Train the pipeline's YOLO model on a dataset version, then evaluate it.

    See :func:`hitl_plugin.steps.train`: warm start from the promoted checkpoint (else
    ``model.base_checkpoint``), a checkpoint every epoch under ``models/<dag_id>/<run_id>/``
    (a retry resumes from the last one), COCO mAP on the clean held-out set, and the
    checkpoint's lineage. Returns a :class:`~hitl_plugin.schemas.TrainResult`.

    :param config_path: the pipeline YAML file.
    :param version: the dataset version (default: the latest).
    :param epochs: epochs for this run (default: ``training.epochs``).
    :param imgsz: image size for this run (default: ``training.imgsz``).
    :param name: a sub-folder of the run's model folder, for a second training in the same
        run (the retrain on the merged version that ends a round).
    """

    template_fields: Sequence[str] = ("config_path", "version", "epochs", "imgsz")

    def __init__(self, *, config_path: str, version: Any = None, epochs: Any = None,
                 imgsz: Any = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.version = version
        self.epochs = epochs
        self.imgsz = imgsz
        self.name = name

    def execute(self, context: Context) -> TrainResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import optional_int, optional_str

        return steps.train(self.round(context), version=optional_str(self.version, "version"),
                           epochs=optional_int(self.epochs, "epochs", 1),
                           imgsz=optional_int(self.imgsz, "imgsz", 32), name=self.name)


class PromoteModelOperator(HitlOperator, SkipMixin):
    """Promote the new checkpoint if it beats the promoted one on the held-out metric.

    See :func:`hitl_plugin.steps.gate`. Returns a :class:`~hitl_plugin.schemas.GateResult`:
    ``checkpoint`` is the one to use from now on (the promoted one); a retry after a
    promotion returns the same answer.

    With ``approval`` (the approval task's answer): a Reject promotes nothing; the round
    goes on with the promoted checkpoint, or, when it ends (``gate.approval.on_reject:
    end_round``, or nothing promoted yet), this task succeeds with ``ended`` in its result
    and skips the tasks after it (the rest of the round).

    :param config_path: the pipeline YAML file.
    :param candidate: the train step's result.
    :param approval: the approval task's result (``gate.require_approval``), or None.
    """

    template_fields: Sequence[str] = ("config_path", "candidate", "approval")
    inherits_from_skipmixin = True

    def __init__(self, *, config_path: str, candidate: Any, approval: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.candidate = candidate
        self.approval = approval

    def execute(self, context: Context) -> GateResult:
        from hitl_plugin import steps

        result = steps.gate(self.round(context), candidate=self.candidate,
                            approval=self.approval)
        if result.get("ended"):
            # Skipping ends the task before its result is pushed: push it first.
            ti = context["ti"]
            for key, value in result.items():
                ti.xcom_push(key=key, value=value)
            ti.xcom_push(key="return_value", value=result)
            self.log.warning("Round ended: %s; skipping the rest of the round",
                             result["ended"])
            self.skip(ti=ti, tasks=context["task"].get_direct_relatives(upstream=False))
        return result
