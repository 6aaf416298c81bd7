"""Operators of the labeling round: submit batches to Label Studio, collect corrections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from hitl_plugin.operators._args import blank

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.config import PipelineConfig

CORRECTIONS_FILE = "corrections.json"


def _model_version(value: Any) -> str | None:
    """A model version given directly, or the gate's XCom dict (``model_version``)."""
    if isinstance(value, dict):
        value = value.get("model_version") or value.get("checkpoint")
    return None if blank(value) else str(value)


def project_title(config: PipelineConfig, dag_id: str) -> str:
    """The pipeline's Label Studio project title (``labeling.project_title`` or ``hitl-<dag>``)."""
    return config.labeling.project_title or f"hitl-{dag_id}"


def _selection_path(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("selection")
    if blank(value) or not isinstance(value, str):
        raise AirflowException(f"expected a selection path or a dict with 'selection', got "
                               f"{value!r}")
    return value


class SubmitForLabelingOperator(BaseOperator):
    """Send one batch of the round's selection to Label Studio (map it with ``.expand``).

    Finds or creates the pipeline's project (classes, local-files storage, model version),
    then imports the batch's samples that the project does not hold yet, with the model's
    boxes as pre-annotations, in one bulk import. Idempotent under retries: the key is
    ``(dag id, run id, image id)``. Writes ``submissions/<start>-<stop>.json`` (task id per
    image id) and returns ``{"project_id", "submitted", "already_present", "batch": [start,
    stop], "duplicates", "submission"}``.

    :param config_path: the pipeline YAML file.
    :param batch: ``{"selection": path, "start": i, "stop": j}`` (the fan-out unit).
    :param model_version: the model behind the predictions (a name, or the gate's XCom
        dict); default: the selection's ``model_version``.
    :param label_studio_conn_id: the Label Studio connection.
    """

    template_fields: Sequence[str] = ("config_path", "batch", "model_version",
                                      "label_studio_conn_id")

    def __init__(self, *, config_path: str, batch: Any, model_version: Any = None,
                 label_studio_conn_id: str = "label_studio_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        self.config_path = config_path
        self.batch = batch
        self.model_version = model_version
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.hooks.label_studio import LabelStudioHook
        from hitl_plugin.labeling.project import ensure_project_info
        from hitl_plugin.labeling.submit import submit_batch
        from hitl_plugin.paths import Layout
        from hitl_plugin.schemas import SelectionManifest

        batch = self.batch
        if not isinstance(batch, dict) or not {"selection", "start", "stop"} <= set(batch):
            raise AirflowException(f"batch must be {{'selection', 'start', 'stop'}}, got "
                                   f"{batch!r}")
        config = load_config(self.config_path)
        layout = Layout.at(storage_root(config))
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        round_dir = layout.round_dir(dag_id, run_id)
        with open(_selection_path(batch), encoding="utf-8") as fh:
            selection = SelectionManifest.model_validate_json(fh.read())
        model_version = _model_version(self.model_version) or selection.model_version
        class_names = [c.name for c in sorted(selection.categories, key=lambda c: c.id)]
        with LabelStudioHook(self.label_studio_conn_id).get_client() as client:
            project = ensure_project_info(
                client, title=project_title(config, dag_id), class_names=class_names,
                images_root=layout.images, model_version=model_version, lock_dir=round_dir)
            project_id = project["id"]
            result = submit_batch(
                client, project_id=project_id, selection=selection, start=int(batch["start"]),
                stop=int(batch["stop"]), dag_id=dag_id, run_id=run_id,
                model_version=model_version, round_dir=round_dir,
                sync_model_version=not project["model_version_ok"])
        self.log.info("Submitted %s new tasks (%s already present) to project %s",
                      result["submitted"], result["already_present"], project_id)
        return result


class CollectCorrectionsOperator(BaseOperator):
    """Read the round's finished tasks back as validated corrections (``corrections.json``).

    Returns ``{"corrections": path, "labeled": n, "skipped": n, "rejected": n, "pending": n}``
    (``pending``: selected images without an answer, whose labels stay as they were).

    :param config_path: the pipeline YAML file.
    :param selection: the selection path, or the select step's XCom dict.
    :param submissions: the submit step's results (for the project id).
    :param project_id: the Label Studio project, when no ``submissions`` are given.
    :param label_studio_conn_id: the Label Studio connection.
    """

    template_fields: Sequence[str] = ("config_path", "selection", "submissions", "project_id",
                                      "label_studio_conn_id")

    def __init__(self, *, config_path: str, selection: Any, submissions: Any = None,
                 project_id: int | str | None = None,
                 label_studio_conn_id: str = "label_studio_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        if submissions is None and project_id is None:
            raise ValueError("CollectCorrectionsOperator needs submissions or project_id")
        self.config_path = config_path
        self.selection = selection
        self.submissions = submissions
        self.project_id = project_id
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.hooks.label_studio import LabelStudioHook
        from hitl_plugin.labeling.collect import collect_corrections
        from hitl_plugin.labeling.submit import project_and_expected
        from hitl_plugin.paths import Layout
        from hitl_plugin.schemas import SelectionManifest, write_json_atomic

        config = load_config(self.config_path)
        layout = Layout.at(storage_root(config))
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        with open(_selection_path(self.selection), encoding="utf-8") as fh:
            selection = SelectionManifest.model_validate_json(fh.read())
        try:
            project_id, _ = project_and_expected(self.submissions, self.project_id)
        except ValueError as exc:
            raise AirflowException(str(exc)) from None
        with LabelStudioHook(self.label_studio_conn_id).get_client() as client:
            corrections = collect_corrections(client, project_id=project_id, dag_id=dag_id,
                                              run_id=run_id, selection=selection)
        path = write_json_atomic(layout.round_dir(dag_id, run_id) / CORRECTIONS_FILE,
                                 corrections)
        labeled = sum(1 for c in corrections.items if c.status == "labeled")
        skipped = sum(1 for c in corrections.items if c.status == "skipped")
        answered = {c.image_id for c in corrections.items} | {
            r.image_id for r in corrections.rejected if r.image_id is not None}
        pending = sum(1 for s in selection.items if s.image_id not in answered)
        self.log.info("Corrections: %s labeled, %s skipped, %s rejected, %s pending -> %s",
                      labeled, skipped, len(corrections.rejected), pending, path)
        return {"corrections": str(path), "labeled": labeled, "skipped": skipped,
                "rejected": len(corrections.rejected), "pending": pending}
