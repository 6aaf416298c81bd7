"""The merge step: a round's corrections become a new immutable dataset version."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from hitl_plugin.assets_uri import dataset_asset, dataset_asset_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import Corrections


class MergeCorrectionsOperator(BaseOperator):
    """Merge the validated corrections of this run into a new dataset version.

    Calls :func:`hitl_plugin.dataset.merge.merge_corrections` with the round key
    ``"<dag_id>|<run_id>"`` (a retry returns the version already published, and creates
    none), writes the merge report to ``rounds/<dag_id>/<run_id>/merge_report.json``, and
    emits an event on the dataset's Asset (``hitl://datasets/<name>``) with
    ``extra = {"version", "parent", "round"}``.

    Returns ``{"version", "parent", "round", "images_corrected", "pool_labeled", "skipped",
    "conflicts", "rejected", "report"}``.

    :param config_path: the pipeline YAML file.
    :param corrections: the collect step's result (a dict whose ``corrections`` key is the
        path of ``corrections.json``), that path itself, or the corrections as a dict.
    :param base_version: the version the round started from (the parent of the new one);
        empty: the version recorded in the corrections.
    :param dataset: dataset name for the default outlet when ``config_path`` cannot be read
        at parse time (templated). Ignored when ``outlets`` is given.
    """

    template_fields: Sequence[str] = ("config_path", "corrections", "base_version")
    ui_color = "#d9f2e6"

    def __init__(
        self,
        *,
        config_path: str,
        corrections: str | dict,
        base_version: str | None,
        dataset: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("outlets") is None:
            name = dataset or _dataset_name(config_path)
            if name:
                kwargs["outlets"] = [dataset_asset(name)]
        super().__init__(**kwargs)
        if not isinstance(config_path, str) or not config_path:
            raise ValueError("config_path must be a non-empty string")
        if corrections is None:  # an XComArg or a template is fine here; None never is
            raise ValueError("corrections is required (the collect step's result)")
        self.config_path = config_path
        self.corrections = corrections
        self.base_version = base_version

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.dataset.merge import REPORT_NAME, merge_corrections
        from hitl_plugin.dataset.store import DatasetStore
        from hitl_plugin.paths import Layout

        config = load_config(self.config_path)
        root = storage_root(config)
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        corrections = _load_corrections(self.corrections)
        if (corrections.dag_id, corrections.run_id) != (dag_id, run_id):
            self.log.warning("Merging corrections of %s/%s in run %s/%s", corrections.dag_id,
                             corrections.run_id, dag_id, run_id)
        store = DatasetStore(root, config.dataset.name)
        result = merge_corrections(
            store,
            base_version=self.base_version or corrections.version,
            corrections=corrections,
            round_key=f"{dag_id}|{run_id}",
            human_weight=config.merge.human_weight,
            decay=config.merge.decay,
            report_path=Layout.at(root).round_dir(dag_id, run_id) / REPORT_NAME,
        )
        self.log.info(
            "Dataset %s %s (parent %s): %s image(s) corrected, %s from the pool, %s skipped, "
            "%s conflict(s), %s rejected; report %s", config.dataset.name, result["version"],
            result["parent"], result["images_corrected"], result["pool_labeled"],
            result["skipped"], result["conflicts"], result["rejected"], result["report"],
        )
        uri = dataset_asset_uri(config.dataset.name)
        extra = {"version": result["version"], "parent": result["parent"],
                 "round": result["round"]}
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset) and outlet.uri == uri:
                context["outlet_events"][outlet].extra = extra
        return result


def _dataset_name(config_path: Any) -> str | None:
    """The config's dataset name, when the file can be read at parse time (a light YAML)."""
    if not isinstance(config_path, str) or "{{" in config_path:
        return None
    from hitl_plugin.config import ConfigError, load_config

    try:
        return load_config(config_path).dataset.name
    except ConfigError:
        return None  # the task fails with the full message when it runs


def _load_corrections(value: Any) -> Corrections:
    from hitl_plugin.schemas import Corrections

    if isinstance(value, dict) and "items" in value:
        return Corrections.model_validate(value)
    if isinstance(value, dict):
        value = value.get("corrections")
    if not isinstance(value, (str, os.PathLike)) or not value:
        raise ValueError("corrections: expected the collect step's result or a path to "
                         "corrections.json")
    return Corrections.model_validate_json(Path(value).read_bytes())
