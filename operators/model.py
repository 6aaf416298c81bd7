"""Operators that train, evaluate and gate the detector.

``YoloTrainOperator`` trains and then evaluates (one task: the evaluation needs the
checkpoint on the same machine, a GPU worker included, and is short next to training);
``PromoteModelOperator`` applies the gate. With ``gate.require_approval`` the DAG puts
Airflow's ``ApprovalOperator`` between the two; :func:`approval_body` writes its text.

Nothing heavy is imported here: torch and Ultralytics load inside ``execute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from hitl_plugin.operators._args import optional_int

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["PromoteModelOperator", "YoloTrainOperator", "approval_body"]


def approval_body(metrics: dict) -> str:
    """Markdown body for ``ApprovalOperator``: the candidate checkpoint's metrics."""
    from hitl_plugin.model.gate import approval_body as body

    return body(metrics)


class YoloTrainOperator(BaseOperator):
    """Train the pipeline's YOLO model on a dataset version, then evaluate it.

    Warm-starts from the pipeline's promoted checkpoint, else ``model.base_checkpoint``.
    Writes a checkpoint every epoch under ``models/<dag_id>/<run_id>/``; a retry of the task
    resumes from the last one instead of starting again. The evaluation is COCO mAP on the
    dataset's clean held-out set (``metrics.json`` in the same folder).

    Returns ``{"checkpoint", "last", "model_dir", "version", "epochs",
    "resumed_from_epoch", "weights_source", "metrics": {"map50_95", "map50", "per_class",
    "n_images", "n_predictions", "checkpoint"}, "train_metrics", ...}``.

    :param config_path: the pipeline YAML file.
    :param version: the dataset version (default: the latest).
    :param epochs: epochs for this run (default: ``training.epochs``).
    :param imgsz: image size for this run (default: ``training.imgsz``).
    :param name: a sub-folder of the run's model folder, for a second training in the same
        run (the retrain on the merged version that ends a round).
    """

    template_fields: Sequence[str] = ("config_path", "version", "epochs", "imgsz")

    def __init__(
        self,
        *,
        config_path: str,
        version: str | None = None,
        epochs: int | str | None = None,
        imgsz: int | str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        self.config_path = config_path
        self.version = version
        self.epochs = epochs
        self.imgsz = imgsz
        self.name = name

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.model.train import train_and_evaluate

        config = load_config(self.config_path)
        epochs = optional_int(self.epochs, "epochs", 1)
        imgsz = optional_int(self.imgsz, "imgsz", 32)
        result = train_and_evaluate(
            config, root=storage_root(config), dag_id=context["dag"].dag_id,
            run_id=context["run_id"], version=self.version or None, epochs=epochs, imgsz=imgsz,
            name=self.name,
        )
        metrics = result["metrics"]
        self.log.info("Trained %s (%s epochs, warm start: %s, resumed from epoch %s)",
                      result["checkpoint"], result["epochs"], result["weights_source"],
                      result["resumed_from_epoch"])
        self.log.info("Held-out mAP50-95 %.4f, mAP50 %.4f on %s images", metrics["map50_95"],
                      metrics["map50"], metrics["n_images"])
        return result


class PromoteModelOperator(BaseOperator):
    """Promote the new checkpoint if it beats the promoted one on the held-out metric.

    Returns ``{"promoted": bool, "checkpoint": <the checkpoint to use from now on: the
    promoted one>, "model_version", "metrics", "candidate", "current", "reason"}``; a retry
    after a promotion returns the same answer.

    :param config_path: the pipeline YAML file.
    :param train_result: the XCom result of :class:`YoloTrainOperator`.
    """

    template_fields: Sequence[str] = ("config_path", "train_result")

    def __init__(self, *, config_path: str, train_result: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        self.config_path = config_path
        self.train_result = train_result

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.model.gate import apply_gate

        result = self.train_result
        if not isinstance(result, dict) or "checkpoint" not in result or "metrics" not in result:
            raise AirflowException(
                "train_result must be the train task's result with 'checkpoint' and 'metrics', "
                f"got {type(result).__name__}"
            )
        config = load_config(self.config_path)
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        verdict = apply_gate(
            storage_root(config), dag_id, run_id, result["checkpoint"], result["metrics"],
            metric=config.gate.metric, margin=config.gate.margin,
        )
        self.log.info("Gate: %s (promoted: %s)", verdict["reason"], verdict["promoted"])
        return verdict
