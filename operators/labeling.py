"""Operators of the labeling round: submit batches to Label Studio, collect corrections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hitl_plugin.operators.base import HitlOperator
from hitl_plugin.operators.links import LabelStudioProjectLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import CollectResult, SubmitResult


class SubmitForLabelingOperator(HitlOperator):
    """Send one batch of the round's selection to Label Studio (map it with ``.expand``).

    See :func:`hitl_plugin.steps.submit`: idempotent under retries (the key is
    ``(dag id, run id, image id)``), one bulk import per batch. Returns ``{"project_id",
    "submitted", "already_present", "batch": [start, stop], "duplicates", "submission"}``.

    :param config_path: the pipeline YAML file.
    :param batch: ``{"selection", "start", "stop"}`` (one of the select step's batches).
    :param model_version: the model behind the predictions (the gate's ``model_version``);
        default: the selection's.
    :param label_studio_conn_id: the Label Studio connection.
    """

    template_fields: Sequence[str] = ("config_path", "batch", "model_version",
                                      "label_studio_conn_id")
    operator_extra_links = (LabelStudioProjectLink(),)

    def __init__(self, *, config_path: str, batch: Any, model_version: Any = None,
                 label_studio_conn_id: str = "label_studio_default", **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", False)  # mapped: downstream takes the list
        super().__init__(config_path=config_path, **kwargs)
        self.batch = batch
        self.model_version = model_version
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Context) -> SubmitResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import optional_str

        rnd = self.round(context)
        batch = steps.checked_batch(self.batch)  # before any connection is opened
        with self.label_studio(self.label_studio_conn_id) as client:
            return steps.submit(rnd, client, batch=batch,
                                model_version=optional_str(self.model_version, "model_version"))


class CollectCorrectionsOperator(HitlOperator):
    """Read the round's finished tasks back as validated corrections (``corrections.json``).

    See :func:`hitl_plugin.steps.collect`. Returns ``{"corrections", "labeled", "skipped",
    "rejected", "pending"}`` (``pending``: selected images without an answer, whose labels
    stay as they were).

    :param config_path: the pipeline YAML file.
    :param selection: the select step's ``selection`` file.
    :param submissions: the submit step's results (for the project id).
    :param project_id: the Label Studio project, when no ``submissions`` are given.
    :param label_studio_conn_id: the Label Studio connection.
    """

    template_fields: Sequence[str] = ("config_path", "selection", "submissions", "project_id",
                                      "label_studio_conn_id")

    def __init__(self, *, config_path: str, selection: Any, submissions: Any = None,
                 project_id: int | str | None = None,
                 label_studio_conn_id: str = "label_studio_default", **kwargs: Any) -> None:
        super().__init__(config_path=config_path, **kwargs)
        if submissions is None and project_id is None:
            raise ValueError("CollectCorrectionsOperator needs submissions or project_id")
        self.selection = selection
        self.submissions = submissions
        self.project_id = project_id
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Context) -> CollectResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import required_str

        rnd = self.round(context)
        with self.label_studio(self.label_studio_conn_id) as client:
            return steps.collect(rnd, client, selection=required_str(self.selection, "selection"),
                                 submissions=self.submissions, project_id=self.project_id)
