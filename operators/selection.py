"""Operators that score a dataset version with the model and choose what people label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hitl_plugin.operators.base import HitlOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import DriftResult, ScoreResult, SelectResult


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


class DetectDriftOperator(HitlOperator):
    """Has the pool drifted from the held-out set's world? Writes ``drift.json``.

    See :func:`hitl_plugin.steps.drift`: KS tests on the model's confidence and box count,
    a chi-square permutation test on the classes of its boxes and an MMD permutation test
    on backbone embeddings, all from the score pass (no inference here). Returns
    ``{"drift", "verdict", "detected", "p_values"}``; the select step takes ``drift``.

    :param config_path: the pipeline YAML file.
    :param scores: the score step's ``scores`` file (the drift inputs lie beside it).
    :param version: the dataset version that was scored.
    :param model_version: the model behind the scores (recorded).
    """

    template_fields: Sequence[str] = ("config_path", "scores", "version", "model_version")
    ui_color = "#fdebd0"

    def __init__(self, *, config_path: str, scores: Any, version: Any,
                 model_version: Any = None, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.scores = scores
        self.version = version
        self.model_version = model_version

    def execute(self, context: Context) -> DriftResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import optional_str, required_str

        return steps.drift(self.round(context), scores=required_str(self.scores, "scores"),
                           version=required_str(self.version, "version"),
                           model_version=optional_str(self.model_version, "model_version"))


class DriftEventOperator(HitlOperator):
    """Emit an event on the dataset's drift Asset (``hitl://drift/<dataset>``) when the
    drift step detected drift; otherwise skip, and a skipped task emits no event.

    ``extra`` = ``{"round", "version", "reason", "p_values"}``. Pipelines scheduled on the
    Asset (``schedule.on_drift: true``) start a round.

    :param config_path: the pipeline YAML file.
    :param drift: the drift step's result.
    """

    template_fields: Sequence[str] = ("config_path", "drift")
    ui_color = "#fdebd0"

    def __init__(self, *, config_path: str, drift: Any, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.drift = drift

    def execute(self, context: Context) -> dict | None:
        import json

        from airflow.sdk import Asset
        from airflow.sdk.exceptions import AirflowSkipException

        from hitl_plugin.assets_uri import drift_asset_uri

        result = self.drift
        if not isinstance(result, dict) or "detected" not in result:
            raise ValueError(f"drift must be the drift step's result, got {result!r}")
        if not result["detected"]:
            raise AirflowSkipException(f"no drift ({result.get('verdict')}): no event")
        rnd = self.round(context)
        with open(result["drift"], encoding="utf-8") as fh:
            report = json.load(fh)
        extra = {"round": rnd.run_id, "version": report.get("version"),
                 "reason": report.get("reason"), "p_values": result.get("p_values")}
        uri = drift_asset_uri(rnd.config.dataset.name)
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset) and outlet.uri == uri:
                context["outlet_events"][outlet].extra = extra
        self.log.info("Drift event on %s: %s", uri, extra["reason"])
        return extra


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
    :param drift: the drift step's ``drift`` report (none: no drift step in the round).
    """

    template_fields: Sequence[str] = (
        "config_path", "scores", "version", "model_version", "budget", "strategy", "drift")

    def __init__(self, *, config_path: str, scores: Any, version: Any, model_version: Any,
                 budget: Any = None, strategy: Any = None, drift: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.scores = scores
        self.version = version
        self.model_version = model_version
        self.budget = budget
        self.strategy = strategy
        self.drift = drift

    def execute(self, context: Context) -> SelectResult:
        from hitl_plugin import steps
        from hitl_plugin.config import STRATEGIES
        from hitl_plugin.templated import (
            optional_budget,
            optional_choice,
            optional_str,
            required_str,
        )

        return steps.select(
            self.round(context), scores=required_str(self.scores, "scores"),
            version=required_str(self.version, "version"),
            model_version=required_str(self.model_version, "model_version"),
            budget=optional_budget(self.budget),
            strategy=optional_choice(self.strategy, "strategy", STRATEGIES),
            drift=optional_str(self.drift, "drift"))
