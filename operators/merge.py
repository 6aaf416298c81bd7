"""The merge step: a round's corrections become a new immutable dataset version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from hitl_plugin.operators.base import HitlOperator
from hitl_plugin.operators.links import RoundReportLink

from hitl_plugin.assets_uri import dataset_asset, dataset_asset_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.schemas import MergeResult


class MergeCorrectionsOperator(HitlOperator):
    """Merge the validated corrections of this run into a new dataset version.

    See :func:`hitl_plugin.steps.merge`: idempotent per round key ``"<dag_id>|<run_id>"``
    (a retry returns the version already published and creates none), with the merge report
    in the round folder. Emits an event on the dataset's Asset (``hitl://datasets/<name>``)
    with ``extra = {"version", "parent", "round"}``.

    Returns ``{"version", "parent", "round", "images_corrected", "pool_labeled", "skipped",
    "conflicts", "rejected", "report"}``.

    :param config_path: the pipeline YAML file.
    :param corrections: the collect step's ``corrections`` file.
    :param base_version: the version the round started from (the parent of the new one);
        empty: the version recorded in the corrections.
    :param dataset: dataset name for the default outlet when ``config_path`` cannot be read
        at parse time (templated). Ignored when ``outlets`` is given.
    """

    template_fields: Sequence[str] = ("config_path", "corrections", "base_version")
    operator_extra_links = (RoundReportLink(),)
    ui_color = "#d9f2e6"

    def __init__(self, *, config_path: str, corrections: Any, base_version: Any = None,
                 dataset: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("outlets") is None:
            name = dataset or _dataset_name(config_path)
            if name:
                kwargs["outlets"] = [dataset_asset(name)]
        super().__init__(config_path=config_path, **kwargs)
        if corrections is None:  # an XComArg or a template is fine here; None never is
            raise ValueError("corrections is required (the collect step's result)")
        self.corrections = corrections
        self.base_version = base_version

    def execute(self, context: Context) -> MergeResult:
        from hitl_plugin import steps
        from hitl_plugin.templated import optional_str, required_str

        rnd = self.round(context)
        result = steps.merge(rnd, corrections=required_str(self.corrections, "corrections"),
                             base_version=optional_str(self.base_version, "base_version"))
        uri = dataset_asset_uri(rnd.config.dataset.name)
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
    from hitl_plugin.config import load_config
    from hitl_plugin.exceptions import ConfigError

    try:
        return load_config(config_path).dataset.name
    except ConfigError:
        return None  # the task fails with the full message when it runs
