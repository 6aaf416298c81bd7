"""Operators that open and close a round: dataset preparation and the round report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hitl_plugin.operators.base import HitlOperator
from hitl_plugin.operators.links import RoundReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import PrepareResult, ReportResult


class PrepareDatasetOperator(HitlOperator):
    """The dataset version a round starts from, importing the source on first use.

    See :func:`hitl_plugin.steps.prepare`. Returns ``{"version", "counts"}``.

    :param config_path: the pipeline YAML file.
    """

    template_fields: Sequence[str] = ("config_path",)

    def execute(self, context: Context) -> PrepareResult:
        from hitl_plugin import steps

        return steps.prepare(self.round(context))


class RoundReportOperator(HitlOperator):
    """Write the round's summary (``report.json``) and plot (``report.png``).

    See :func:`hitl_plugin.steps.report`. Returns ``{"report", "plot"}``.

    :param config_path: the pipeline YAML file.
    :param base_version: the version the round started from.
    :param train: the train step's result.
    :param gate: the gate step's result.
    :param merge: the merge step's result.
    :param retrain: the result of the training after the merge, when the round has one.
    """

    template_fields: Sequence[str] = ("config_path", "base_version", "train", "gate", "merge",
                                      "retrain")
    operator_extra_links = (RoundReportLink(),)

    def __init__(self, *, config_path: str, base_version: Any, train: Any, gate: Any,
                 merge: Any, retrain: Any = None, **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        self.base_version = base_version
        self.train = train
        self.gate = gate
        self.merge = merge
        self.retrain = retrain

    def execute(self, context: Context) -> ReportResult:
        from hitl_plugin import steps

        return steps.report(self.round(context), base_version=self.base_version,
                            train=self.train, gate=self.gate, merge=self.merge,
                            retrain=self.retrain)
