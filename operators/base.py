"""What every airflow-hitl task shares: the pipeline config, the storage root, the round.

Each operator renders its arguments, opens the :class:`~hitl_plugin.steps.Round` of the
current run through :meth:`HitlTaskMixin.round`, calls its one step in
:mod:`hitl_plugin.steps`, and returns the step's typed result as XCom. The sensor uses the
same mixin. Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from hitl_plugin.labeling.client import LabelStudioClient
    from hitl_plugin.steps import Round


def airflow_variable(key: str) -> str | None:
    """An Airflow Variable, or None when unset or when no Airflow task is running."""
    from airflow.sdk import Variable

    try:
        return Variable.get(key, default=None)
    except Exception:  # plain Python use (no task context): the environment decides
        return None


def _hostname() -> str:
    """The hostname Airflow records for this task (``[core] hostname_callable``)."""
    from airflow.utils.net import get_hostname

    return get_hostname()


class HitlTaskMixin:
    """The templated ``config_path`` and the round of the current run.

    :param config_path: the pipeline YAML file (templated).
    """

    template_fields: Sequence[str] = ("config_path",)
    config_path: str | None

    @staticmethod
    def _checked_config_path(config_path: Any, *, required: bool = True) -> str | None:
        if config_path is None and not required:
            return None
        if not isinstance(config_path, str) or not config_path:
            raise ValueError(f"config_path must be the pipeline YAML file, got {config_path!r}")
        return config_path

    def round(self, context: Context) -> Round:
        """The current run's round: config loaded, storage root found (config, Variable
        ``hitl_storage_root``, ``HITL_HOME``)."""
        from hitl_plugin.steps import Round, record_worker

        rnd = Round.open(self.config_path, dag_id=context["dag"].dag_id,
                         run_id=context["run_id"], variables=airflow_variable)
        ti = context.get("ti")
        task_id = getattr(ti, "task_id", None)
        if task_id is not None:  # which worker runs this try: the round report lists them
            record_worker(rnd, task_id=task_id, map_index=getattr(ti, "map_index", -1),
                          try_number=getattr(ti, "try_number", 0), hostname=_hostname(),
                          queue=getattr(getattr(ti, "task", None), "queue", None))
        return rnd

    @staticmethod
    def label_studio(conn_id: str, **kwargs: Any) -> LabelStudioClient:
        """A Label Studio client from an Airflow connection."""
        from hitl_plugin.hooks.label_studio import LabelStudioHook

        return LabelStudioHook(conn_id, **kwargs).get_client()


class HitlOperator(HitlTaskMixin, BaseOperator):
    """Base of the round's operators: keyword-only, ``config_path`` required.

    Results are dicts whose fields are also pushed as XComs of their own
    (``multiple_outputs``), so that the DAG passes a downstream step exactly the field it
    needs (``op.output["checkpoint"]``).
    """

    def __init__(self, *, config_path: str, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.config_path = self._checked_config_path(config_path)
