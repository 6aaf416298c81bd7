"""Operators that score a dataset version with the model and choose what people label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hitl_plugin.operators.base import HitlOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import ScoreResult, SelectResult


class ScoreSamplesOperator(HitlOperator):
    """Score every train and pool image of a dataset version with a checkpoint.

    See :func:`hitl_plugin.steps.score`. Returns ``{"scores", "n_images", "version",
    "seconds"}``.

    :param config_path: the pipeline YAML file.
    :param checkpoint: the model's ``.pt`` (the gate's ``checkpoint``).
    :param version: the dataset version (default: the latest).
    :param imgsz: inference size (default: ``training.imgsz``).
    """

    template_fields: Sequence[str] = ("config_path", "checkpoint", "version", "imgsz")

    def __init__(self, *, config_path: str, checkpoint: Any, version: Any = None,
                 imgsz: Any = None, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.checkpoint = checkpoint
        self.version = version
        self.imgsz = imgsz

    def execute(self, context: Context) -> ScoreResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import optional_int, optional_str, required_str

        return steps.score(self.round(context),
                           checkpoint=required_str(self.checkpoint, "checkpoint"),
                           version=optional_str(self.version, "version"),
                           imgsz=optional_int(self.imgsz, "imgsz", 32))


class SelectSamplesOperator(HitlOperator):
    """Choose the round's images from the scores and write ``selection.json``.

    See :func:`hitl_plugin.steps.select`. Returns ``{"selection", "n_selected",
    "by_reason", "batches"}``; the submit step is mapped over ``batches``.

    :param config_path: the pipeline YAML file.
    :param scores: the score step's ``scores`` file.
    :param version: the dataset version that was scored.
    :param model_version: the model behind the scores (the gate's ``model_version``).
    :param budget: images to select, a count or a fraction in (0, 1) (default: the config).
    :param strategy: ``hybrid``, ``label_error``, ``uncertainty`` or ``random`` (default:
        the config).
    """

    template_fields: Sequence[str] = (
        "config_path", "scores", "version", "model_version", "budget", "strategy")

    def __init__(self, *, config_path: str, scores: Any, version: Any, model_version: Any,
                 budget: Any = None, strategy: Any = None, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.scores = scores
        self.version = version
        self.model_version = model_version
        self.budget = budget
        self.strategy = strategy

    def execute(self, context: Context) -> SelectResult:
        from hitl_plugin import steps
        from hitl_plugin.config import STRATEGIES
        from hitl_plugin.templated import optional_budget, optional_choice, required_str

        return steps.select(
            self.round(context), scores=required_str(self.scores, "scores"),
            version=required_str(self.version, "version"),
            model_version=required_str(self.model_version, "model_version"),
            budget=optional_budget(self.budget),
            strategy=optional_choice(self.strategy, "strategy", STRATEGIES))
