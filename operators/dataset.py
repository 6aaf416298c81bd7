"""Operators that open and close a round: dataset preparation and the round report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class PrepareDatasetOperator(BaseOperator):
    """Return the dataset version a round starts from, importing the source on first use.

    When the pipeline's dataset has no version yet, ``dataset.source_dir`` (the layout
    ``hitl synth`` writes) is imported as ``v0001``. Returns the version name.

    :param config_path: the pipeline YAML file.
    """

    template_fields: Sequence[str] = ("config_path",)

    def __init__(self, *, config_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Context) -> str:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.dataset.store import DatasetError, DatasetStore

        config = load_config(self.config_path)
        store = DatasetStore(storage_root(config), config.dataset.name)
        version = store.latest()
        if version is None:
            source = config.resolve(config.dataset.source_dir)
            if source is None:
                raise DatasetError(
                    f"{self.config_path}: dataset {config.dataset.name!r} has no version under "
                    f"{store.dir} and dataset.source_dir is not set"
                )
            self.log.info("Importing %s as the first version of %s", source, config.dataset.name)
            version = store.import_source(source)
        manifest = store.verify(version)
        self.log.info(
            "Round starts from %s %s: %s", config.dataset.name, version, manifest["counts"]
        )
        return version


class RoundReportOperator(BaseOperator):
    """Write the round's summary (``report.json``) and plot (``report.png``).

    :param config_path: the pipeline YAML file.
    :param results: the XCom results of the round's steps, by step name.
    """

    template_fields: Sequence[str] = ("config_path", "results")

    def __init__(self, *, config_path: str, results: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.results = results

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.paths import Layout
        from hitl_plugin.report import write_round_report

        config = load_config(self.config_path)
        layout = Layout.at(storage_root(config))
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        summary = write_round_report(
            layout, config, dag_id=dag_id, run_id=run_id, results=self.results
        )
        for line in summary["text"].splitlines():
            self.log.info("%s", line)
        return {"report": summary["report"], "plot": summary["plot"]}
