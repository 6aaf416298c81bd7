"""Build one Airflow DAG per pipeline YAML config.

The DAG file in ``dags/`` calls :func:`build_dags` on ``dags/configs/``. Only light modules
are imported here (pydantic, yaml, the Airflow SDK, the thin operators): DAG parsing
stays fast, and every task process re-parses its DAG file.

A config that does not validate does not break the other pipelines: the valid ones still
become DAGs, and the bad ones surface as one DAG import error of the DAG file whose text
names each bad file, field and reason (see :class:`ConfigErrorDag`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from hitl_plugin.assets_uri import dataset_asset, drift_asset
from hitl_plugin.config import COMPLETIONS, STRATEGIES, PipelineConfig, check_configs
from hitl_plugin.exceptions import ConfigError

log = logging.getLogger(__name__)


class ConfigErrorDag(DAG):
    """A stand-in DAG that fails validation with the config errors of a DAG file.

    Airflow records an exception raised while it validates a DAG as an import error of the
    file and goes on bagging the file's other DAGs, whereas an exception at import time
    would drop them all. So bad configs become one import error with a readable message.
    """

    def __init__(self, errors: list[str], **kwargs) -> None:
        super().__init__(dag_id="hitl_config_errors", schedule=None, **kwargs)
        self.hitl_errors = errors

    def validate(self) -> None:  # noqa: D102 - see class docstring
        raise ConfigError(
            f"{len(self.hitl_errors)} pipeline config(s) invalid:\n" + "\n".join(self.hitl_errors)
        )


def _schedule(config: PipelineConfig):
    cron = config.schedule.cron
    assets = []
    if config.schedule.on_new_version:
        assets.append(dataset_asset(config.dataset.name))
    if config.schedule.on_drift:  # opt-in: a detection would otherwise start round after round
        assets.append(drift_asset(config.dataset.name))
    asset = None
    for one in assets:
        asset = one if asset is None else asset | one
    # run_immediately=0: unpausing must not start a run for an interval that already passed
    # (by default a daily cron runs the past interval if it is less than 2.4 h old).
    timetable = (
        CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0)) if cron else None
    )
    if timetable is not None and asset is not None:
        return AssetOrTimeSchedule(timetable=timetable, assets=asset)
    return asset if asset is not None else timetable


def _params(config: PipelineConfig) -> dict[str, Param]:
    sel, train, lab = config.selection, config.training, config.labeling
    return {
        "budget": Param(
            sel.budget, type=["null", "integer"], minimum=0,
            description="Images to send to people this round (empty: the config's "
            f"budget_fraction, {sel.budget_fraction}).",
        ),
        "strategy": Param(sel.strategy, type="string", enum=list(STRATEGIES),
                          description="How samples are chosen."),
        "epochs": Param(train.epochs, type="integer", minimum=1, maximum=1000,
                        description="Training epochs this round."),
        "imgsz": Param(train.imgsz, type="integer", minimum=32, maximum=1280,
                       description="Training and scoring image size (pixels)."),
        "completion": Param(
            lab.completion, type="string", enum=list(COMPLETIONS),
            description="Wait for all labeling tasks, or for min_fraction by the deadline.",
        ),
        "min_fraction": Param(lab.min_fraction, type="number", exclusiveMinimum=0, maximum=1,
                              description="With completion=fraction: share of tasks required."),
    }


def failure_notifiers(config: PipelineConfig) -> list | None:
    """The DAG's ``on_failure_callback``: ``round_failed`` to the notifiers that take it."""
    from hitl_plugin.notify import HitlNotifier

    notifiers = config.notifications.for_event("round_failed")
    return [HitlNotifier(event="round_failed", notifiers=notifiers)] if notifiers else None


def _check_notifiers(config: PipelineConfig) -> None:
    """Build every configured notifier once, so that a bad argument value is the config's
    import error (naming the field) rather than a warning at the moment it should notify."""
    from hitl_plugin.notify import build

    sections = [("notifications.notifiers", config.notifications.notifiers)]
    if config.gate.approval.notifiers:
        sections.append(("gate.approval.notifiers", config.gate.approval.notifiers))
    for field, specs in sections:
        for i, spec in enumerate(specs):
            try:
                build(spec)
            except Exception as exc:
                raise ConfigError(f"{config.config_path}: {field}.{i}: {spec.class_path} "
                                  f"cannot be built from its args: {type(exc).__name__}: "
                                  f"{exc}") from None


def approval_operator(config: PipelineConfig, path: str, candidate: Any, **kwargs: Any):
    """The approval task (``gate.require_approval``): Airflow's ``ApprovalOperator`` with the
    config's timeout, default answer, people and notifiers; never retried, so that a timeout
    does not start a second full wait.

    :param candidate: the train step's result (an ``XComArg``).
    """
    from hitl_plugin.notify import HitlNotifier
    from hitl_plugin.operators.approval import CheckpointApprovalOperator

    approval = config.gate.approval
    notifiers = approval.notifiers
    if notifiers is None:
        notifiers = config.notifications.for_event("approval_requested")
    return CheckpointApprovalOperator(
        task_id="approve_checkpoint", config_path=path, candidate=candidate,
        response_timeout=timedelta(hours=approval.response_timeout_hours),
        defaults=CheckpointApprovalOperator.REJECT if approval.on_timeout == "reject"
        else CheckpointApprovalOperator.APPROVE,
        assigned_users=approval.hitl_users() or None,
        notifiers=[HitlNotifier(event="approval_requested", notifiers=notifiers)]
        if notifiers else None,
        retries=0,
        **kwargs,
    )


def build_dag(config: PipelineConfig) -> DAG:
    """Build the round DAG of one pipeline config.

    Each task gets exactly the field of an upstream result that its step takes
    (``op.output["field"]``; the operators push their result's fields as XComs).
    """
    from hitl_plugin.operators.dataset import PrepareDatasetOperator, RoundReportOperator
    from hitl_plugin.operators.labeling import CollectCorrectionsOperator, SubmitForLabelingOperator
    from hitl_plugin.operators.merge import MergeCorrectionsOperator
    from hitl_plugin.operators.model import PromoteModelOperator, YoloTrainOperator
    from hitl_plugin.operators.selection import (
        DetectDriftOperator,
        DriftEventOperator,
        ScoreSamplesOperator,
        SelectSamplesOperator,
    )
    from hitl_plugin.sensors.label_studio import LabelsReadySensor

    path = config.config_path or ""
    _check_notifiers(config)
    conn_id = "{{ var.value.get('hitl_label_studio_conn_id', '%s') }}" % config.labeling.conn_id
    with DAG(
        dag_id=config.dag_id,
        description=config.description or f"Human-in-the-loop training ({Path(path).name})",
        schedule=_schedule(config),
        start_date=None,
        catchup=False,
        max_active_runs=1,
        params=_params(config),
        render_template_as_native_obj=True,
        default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
        tags=["hitl", config.dataset.name],
        on_failure_callback=failure_notifiers(config),
        doc_md=f"Pipeline config: `{path}`. Each run is one round: train, evaluate, gate, "
        "score, detect drift, select, submit to Label Studio, wait for people, collect, "
        "merge.",
    ) as dag:
        prepare = PrepareDatasetOperator(task_id="prepare", config_path=path)
        version = prepare.output["version"]
        # training and scoring go to the GPU workers' queue in the distributed mode
        model_queue = {"queue": config.training.queue} if config.training.queue else {}
        train = YoloTrainOperator(
            task_id="train", config_path=path, version=version,
            epochs="{{ params.epochs }}", imgsz="{{ params.imgsz }}", **model_queue,
        )
        # With an approval, the gate applies the person's answer (gate.approval.on_reject).
        approve = (approval_operator(config, path, train.output)
                   if config.gate.require_approval else None)
        promote = PromoteModelOperator(
            task_id="gate", config_path=path, candidate=train.output,
            approval=approve.output if approve is not None else None)
        score = ScoreSamplesOperator(
            task_id="score", config_path=path, checkpoint=promote.output["checkpoint"],
            version=version, imgsz="{{ params.imgsz }}", **model_queue,
        )
        drift = None
        if config.drift.enabled:  # before selection: has the pool drifted?
            drift = DetectDriftOperator(
                task_id="detect_drift", config_path=path, scores=score.output["scores"],
                version=version, model_version=promote.output["model_version"])
            DriftEventOperator(task_id="drift_event", config_path=path, drift=drift.output,
                               outlets=[drift_asset(config.dataset.name)])
        select = SelectSamplesOperator(
            task_id="select", config_path=path, scores=score.output["scores"], version=version,
            model_version=promote.output["model_version"],
            budget="{{ params.budget }}", strategy="{{ params.strategy }}",
            drift=drift.output["drift"] if drift is not None else None,
        )

        @task
        def batches(batch_list: list[dict]) -> list[dict]:
            """The fan-out unit: one submit task per batch of the selection."""
            return batch_list

        submit = SubmitForLabelingOperator.partial(
            task_id="submit", config_path=path, model_version=promote.output["model_version"],
            label_studio_conn_id=conn_id,
        ).expand(batch=batches(select.output["batches"]))
        wait = LabelsReadySensor(
            task_id="wait_for_labels", config_path=path, submissions=submit.output,
            completion="{{ params.completion }}", min_fraction="{{ params.min_fraction }}",
            label_studio_conn_id=conn_id,
        )
        collect = CollectCorrectionsOperator(
            task_id="collect", config_path=path, selection=select.output["selection"],
            submissions=submit.output, label_studio_conn_id=conn_id,
        )
        merge = MergeCorrectionsOperator(
            task_id="merge", config_path=path, corrections=collect.output["corrections"],
            base_version=version, outlets=[dataset_asset(config.dataset.name)],
        )
        retrain = None
        if config.training.retrain_after_merge:
            retrain = YoloTrainOperator(
                task_id="retrain", config_path=path, version=merge.output["version"],
                epochs="{{ params.epochs }}", imgsz="{{ params.imgsz }}", name="after-merge",
                **model_queue,
            )
        report = RoundReportOperator(
            task_id="report", config_path=path, base_version=version, train=train.output,
            gate=promote.output, merge=merge.output,
            retrain=retrain.output if retrain is not None else None,
        )
        submit >> wait >> collect
        merge >> report
    return dag


def build_all(paths: list[str | Path]) -> tuple[dict[str, tuple[PipelineConfig, DAG]],
                                                list[str]]:
    """Validate the pipeline files together and build a DAG from each good one.

    :returns: ``({dag_id: (config, DAG)}, errors)``: the errors are the texts that Airflow
        shows as the DAG file's import error, and that ``hitl config check`` prints.
    """
    configs, errors = check_configs(paths)
    built: dict[str, tuple[PipelineConfig, DAG]] = {}
    for config in configs.values():
        try:
            built[config.dag_id] = (config, build_dag(config))
        except ConfigError as exc:
            errors.append(str(exc))
    return built, errors


def build_dags(config_dir: str | Path) -> dict[str, DAG]:
    """Build a DAG for every ``*.yaml`` in ``config_dir``; collect the errors of bad ones
    (:func:`build_all`) into one stand-in DAG that fails validation."""
    built, errors = build_all(sorted(Path(config_dir).glob("*.y*ml")))
    dags = {dag_id: dag for dag_id, (_, dag) in built.items()}
    for error in errors:
        log.error("%s", error)
    if errors:
        dags["hitl_config_errors"] = ConfigErrorDag(errors)
    return dags
