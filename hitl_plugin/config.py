"""Pipeline configuration: one YAML file per pipeline, validated by pydantic.

Every field has a default that works on a 2-core CPU, so a config only needs to
say what differs. Load a file with :func:`load_config`; a bad file raises
:class:`ConfigError`, whose message names the file, the field path and the reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hitl_plugin.exceptions import ConfigError

#: The choices of the fields that a run's trigger form can override too (the DAG's Params
#: take their enums from here, and the operators check their arguments against them).
Strategy = Literal["hybrid", "label_error", "uncertainty", "random"]
Completion = Literal["all", "fraction"]
OnTimeout = Literal["continue", "fail"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
COMPLETIONS: tuple[str, ...] = get_args(Completion)
ON_TIMEOUT: tuple[str, ...] = get_args(OnTimeout)
#: The moments a notifier can be sent (``notifications.notifiers[].events``).
NotifyEvent = Literal["approval_requested", "labeling_ready", "deadline_near", "round_failed"]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    """Where datasets, images, checkpoints and round folders live."""

    root: str | None = Field(
        default=None,
        description="Storage root. Empty: the Airflow Variable `hitl_storage_root`, then the "
        "HITL_HOME environment variable, then `./.hitl`.",
    )


class DatasetConfig(_Section):
    """The dataset this pipeline trains on and improves."""

    name: str = Field(
        default="shapes",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Dataset name; also the folder under `datasets/` and `images/`.",
    )
    source_dir: str | None = Field(
        default=None,
        description="Folder with `images/` and `annotations/{train,val,pool}.json` to import as "
        "version v0001 when the dataset does not exist yet (the layout `hitl synth` writes). "
        "Relative paths are resolved against the config file's folder.",
    )


class ModelConfig(_Section):
    """Which detector to train and where it starts from."""

    architecture: str = Field(
        default="yolov8n.yaml",
        description="Ultralytics model YAML (a built-in name such as `yolov8n.yaml`, or a path). "
        "Never a `.pt` name: those are downloaded by Ultralytics.",
    )
    base_checkpoint: str | None = Field(
        default="builtin",
        description="Warm start: `builtin` (the small checkpoint shipped with the package), a path "
        "to a local `.pt`, or null to train from scratch. The last promoted checkpoint of the "
        "pipeline, when there is one, takes precedence.",
    )


class TrainingConfig(_Section):
    """Training hyperparameters (also settable per run from the trigger form)."""

    epochs: int = Field(default=10, ge=1, le=1000, description="Epochs per round.")
    imgsz: int = Field(default=160, ge=32, le=1280, description="Training image size in pixels.")
    batch: int = Field(default=16, ge=1, le=512, description="Batch size.")
    device: str = Field(
        default="auto", description="`auto` (GPU when present, else CPU), `cpu`, or a CUDA index."
    )
    threads: int = Field(default=2, ge=1, le=256, description="Torch CPU threads.")
    amp: bool | None = Field(
        default=None,
        description="Mixed precision. Empty: on when training runs on a GPU, off on the CPU.",
    )
    workers: int | None = Field(
        default=None, ge=0, le=64,
        description="Dataloader worker processes on a GPU. Empty: from the machine (its CPUs "
        "less one, at most 8). On the CPU the loader always runs in the training process.",
    )
    seed: int = Field(default=0, description="Training seed.")
    plots: bool = Field(default=False, description="Let Ultralytics draw its own training plots.")
    queue: str | None = Field(
        default=None,
        description="Airflow queue of the training and scoring tasks (e.g. `gpu` for the GPU "
        "workers of the distributed mode); empty: the default queue.",
    )
    retrain_after_merge: bool = Field(
        default=False,
        description="End the round by training once more on the merged version and reporting "
        "mAP before and after (the demo does; otherwise the next scheduled run learns from it).",
    )


class NotifierConfig(_Section):
    """One Airflow notifier (a ``BaseNotifier`` subclass), built anew for every message."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class_path: str = Field(
        alias="class", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="Import path of the notifier class, e.g. "
        "`airflow.providers.smtp.notifications.smtp.SmtpNotifier`.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the class. Its templated arguments are rendered "
        "with the task's context plus `hitl`: the moment (`hitl.event`, `hitl.subject`, "
        "`hitl.message`, `hitl.url`, `hitl.dag_id`, `hitl.run_id`), e.g. "
        "`subject: \"{{ hitl.subject }}\"`.",
    )
    events: list[NotifyEvent] | None = Field(
        default=None,
        description="The moments this notifier is sent: `approval_requested`, "
        "`labeling_ready`, `deadline_near`, `round_failed`. Empty: all of them.",
    )

    @field_validator("class_path")
    @classmethod
    def _importable(cls, value: str) -> str:
        notifier_class(value)
        return value

    @model_validator(mode="after")
    def _args_fit(self) -> NotifierConfig:
        import inspect

        try:
            inspect.signature(notifier_class(self.class_path)).bind(**self.args)
        except TypeError as exc:
            raise ValueError(f"args do not fit {self.class_path}: {exc}") from None
        return self

    def takes(self, event: str) -> bool:
        """Whether this notifier is sent at ``event``."""
        return self.events is None or event in self.events


def notifier_class(path: str) -> type:
    """The class at ``path``; ValueError naming what is missing (the field's error)."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    except AttributeError:
        raise ValueError(f"cannot import {path!r}: module {module!r} has no {name!r}") from None
    if not isinstance(found, type) or not callable(getattr(found, "notify", None)):
        raise ValueError(f"{path!r} is not a notifier class (an Airflow BaseNotifier "
                         "subclass with a notify() method)")
    return found


class NotificationsConfig(_Section):
    """Who is told when people must act: a checkpoint awaits approval, labeling tasks are
    ready, a labeling deadline is near with tasks left, a round failed."""

    notifiers: list[NotifierConfig] = Field(
        default_factory=list,
        description="Airflow notifiers sent at those moments (each filtered by its `events`). "
        "A notifier that fails is logged; it never fails the round.",
    )
    near_deadline_hours: float | None = Field(
        default=None, gt=0.0,
        description="Send `deadline_near` once when the labeling wait has this many hours "
        "left and tasks are not done (not when the whole wait is shorter). Empty: never.",
    )

    def for_event(self, event: str) -> list[NotifierConfig]:
        """The notifiers sent at ``event``."""
        return [n for n in self.notifiers if n.takes(event)]


class ApproverConfig(_Section):
    """A person who may answer the approval, as Airflow's auth manager names them."""

    id: str = Field(description="The user id (SimpleAuthManager: the username; FAB: the "
                    "numeric id as text).")
    name: str | None = Field(default=None, description="Display name (default: the id).")


class ApprovalConfig(_Section):
    """The person's answer before the gate (with ``gate.require_approval: true``)."""

    response_timeout_hours: float = Field(
        default=24.0, gt=0.0,
        description="How long the approval waits for an answer; then `on_timeout` applies.",
    )
    on_timeout: Literal["reject", "approve"] = Field(
        default="reject",
        description="No answer in time counts as this answer (Airflow's `defaults`; the "
        "task is never retried into a second wait).",
    )
    on_reject: Literal["keep_current", "end_round"] = Field(
        default="keep_current",
        description="`keep_current`: the promoted checkpoint stays and the round goes on "
        "with it (score, select, labeling, merge); before any promotion there is none, so "
        "the round ends. `end_round`: the rest of the round is skipped.",
    )
    assigned_users: list[str | int | ApproverConfig] = Field(
        default_factory=list,
        description="Who may answer (ids, or `{id, name}`); empty: anyone who may edit the "
        "DAG's human-in-the-loop tasks.",
    )
    notifiers: list[NotifierConfig] | None = Field(
        default=None,
        description="Sent when the checkpoint awaits approval. Empty: the "
        "`notifications.notifiers` that take `approval_requested`; `[]`: none.",
    )

    def hitl_users(self) -> list[dict[str, str]]:
        """``assigned_users`` as Airflow's ``HITLUser`` dicts ``{"id", "name"}``."""
        users = []
        for user in self.assigned_users:
            if isinstance(user, ApproverConfig):
                users.append({"id": user.id, "name": user.name or user.id})
            else:
                users.append({"id": str(user), "name": str(user)})
        return users


class GateConfig(_Section):
    """When a newly trained checkpoint replaces the promoted one."""

    metric: Literal["map50_95", "map50"] = Field(
        default="map50_95", description="Metric compared on the clean held-out set."
    )
    margin: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Promote only if new > current + margin."
    )
    require_approval: bool = Field(
        default=False,
        description="A person approves the checkpoint in Airflow (ApprovalOperator) before the "
        "gate; `approval` says how.",
    )
    approval: ApprovalConfig = Field(
        default_factory=ApprovalConfig,
        description="The approval's settings (they need `require_approval: true`).",
    )

    @model_validator(mode="after")
    def _approval_needs_the_switch(self) -> GateConfig:
        if "approval" in self.model_fields_set and not self.require_approval:
            raise ValueError("gate.approval is set but gate.require_approval is false: add "
                             "`require_approval: true` to ask a person, or remove gate.approval")
        return self


class SelectionConfig(_Section):
    """Which samples people should see."""

    strategy: Strategy = Field(
        default="hybrid",
        description="`label_error` ranks labeled images by suspected label errors, `uncertainty` "
        "ranks pool images by model uncertainty, `hybrid` fills the budget from both.",
    )
    budget: int | None = Field(
        default=None, ge=0, description="Number of images per round (wins over budget_fraction)."
    )
    budget_fraction: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Budget as a fraction of train+pool images."
    )
    pool_share: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Hybrid only: share of the budget for pool images."
    )
    min_error_score: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description="Hybrid only: a labeled image takes a label-error place only with a "
        "label-error score at least this high; places left go to pool images. With a weak "
        "model many clean labels look a little suspicious, and reviewing them labels nothing.",
    )
    audit_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Share of the budget drawn at random, to audit what the scores miss.",
    )
    per_class_quota: dict[str, int] = Field(
        default_factory=dict,
        description="Minimum number of selected images containing each named class.",
    )
    uncertainty: Literal["least_confidence", "margin", "entropy"] = Field(
        default="entropy", description="Uncertainty measure for pool images."
    )
    conf: float = Field(
        default=0.25, gt=0.0, lt=1.0, description="Confidence above which a prediction counts."
    )
    match_iou: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="IoU for a prediction to match a label."
    )
    bad_box_iou: float = Field(
        default=0.75, gt=0.0, le=1.0, description="A matched box below this IoU is a bad box."
    )
    seed: int = Field(default=0, description="Seed of the audit draw and tie-breaking.")
    out_of_sample_folds: int | None = Field(
        default=None, ge=2, le=20,
        description="Score each labeled image with a model that did not train on it: k models, "
        "each trained from `model.base_checkpoint` on the other k-1 folds (k trainings per "
        "round). Empty: in-sample scoring with the round's checkpoint.",
    )
    auto_accept: bool = Field(
        default=False,
        description="Accept the model's confident boxes on pool images without a person: a "
        "pool image whose every box is confident is labeled by the model (pseudo-labels, "
        "provenance `model`, weight `merge.model_weight`); in an image sent to people the "
        "confident boxes are pre-filled and marked as accepted by the model.",
    )
    auto_accept_threshold: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Score from which a model box is accepted. Empty: calibrated each round "
        "on the held-out set to `auto_accept_precision`.",
    )
    auto_accept_precision: float = Field(
        default=0.99, gt=0.0, le=1.0,
        description="Target precision of accepted boxes (IoU >= 0.5, same class) on the "
        "held-out set, when the threshold is calibrated.",
    )
    auto_accept_max_images: int | None = Field(
        default=None, ge=0,
        description="Pool images the model may label alone per round (default: the round's "
        "budget, so pseudo-labels never outnumber the people's).",
    )


class LabelingConfig(_Section):
    """The labeling service and how long to wait for people."""

    service: Literal["label_studio"] = Field(
        default="label_studio", description="Labeling service."
    )
    conn_id: str = Field(
        default="label_studio_default", description="Airflow Connection of the service."
    )
    project_title: str | None = Field(
        default=None, description="Project title; default `hitl-<dag id>`."
    )
    batch_size: int = Field(
        default=50, ge=1, le=5000, description="Samples per submit task (fan-out unit)."
    )
    completion: Completion = Field(
        default="all", description="Wait for all tasks, or for `min_fraction` by the deadline."
    )
    min_fraction: float = Field(
        default=1.0, gt=0.0, le=1.0, description="With `fraction`: share of tasks required."
    )
    timeout_hours: float = Field(
        default=72.0, gt=0.0, description="Absolute deadline after the wait starts."
    )
    on_timeout: OnTimeout = Field(
        default="fail",
        description="At the deadline below the required share: go on with what is done, or fail.",
    )
    poke_interval: float = Field(default=30.0, gt=0.0, description="Seconds between polls.")
    empty_answer: Literal["no_objects", "reject"] = Field(
        default="reject",
        description="A submission with no box for an image that had labels: `reject` keeps the "
        "labels and reports the answer as rejected; `no_objects` accepts that the image "
        "shows nothing to label and removes them. Counted in the round report either way.",
    )
    annotators_per_task: int = Field(
        default=1, ge=1, le=10,
        description="People who answer each overlapped task (k). 1: every task goes to one "
        "person (no overlap). With k > 1 the answers to an overlapped task are merged box by "
        "box (consensus) and a task counts as done at k answers.",
    )
    overlap: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of the round's tasks answered by `annotators_per_task` people; "
        "every gold task is overlapped too.",
    )
    min_agreement: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="An overlapped task whose agreement (mean pairwise box F1 between its "
        "answers, IoU >= 0.5 and the same class) is below this is held and reported, not "
        "merged.",
    )
    min_accuracy: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="A person whose accuracy measured on gold tasks is below this has their "
        "answers outside consensus held back (recorded, not merged). Empty: nobody is held.",
    )
    gold: str | None = Field(
        default=None,
        description="COCO JSON with the true boxes of gold images (matched to the dataset by "
        "`file_name`). Gold tasks look like the others: their pre-fill is the truth with known "
        "errors planted in it, so that accepting everything does not score well. Relative "
        "paths are resolved against the config file's folder.",
    )
    gold_from_consensus: bool = Field(
        default=False,
        description="Also use as gold the images that an earlier round's consensus confirmed "
        "unanimously with at least 3 people.",
    )
    gold_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0,
        description="Share of the round's tasks that are gold, spread over every batch.",
    )


class MergeConfig(_Section):
    """How corrections enter the next dataset version."""

    human_weight: float = Field(
        default=3.0, ge=1.0, le=100.0, description="Sampling weight of a human-verified image."
    )
    decay: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Per later round, the extra weight (weight - 1) is multiplied by this, so "
        "older corrections fade towards 1.0 and the newest do not dominate forever.",
    )
    model_weight: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description="Sampling weight of an image the model labeled alone "
        "(`selection.auto_accept`): below a person's, as pseudo-labels can be wrong.",
    )


class DriftConfig(_Section):
    """The drift step before selection: has the world the pool comes from changed?

    It compares the pool with the held-out set (the world the model was trained for, which
    it never trained on) on the model's outputs of the score pass: the per-image mean
    confidence and box count (two-sample KS tests), the classes of the shown boxes
    (chi-square, permuting images) and the backbone's image embeddings (an MMD
    permutation test). Drift is declared when one p-value is below ``alpha`` divided by
    the number of signals (Bonferroni), so that false alarms stay at or below ``alpha``.
    """

    enabled: bool = Field(
        default=True, description="Run the drift step (it adds no inference pass: the score "
        "pass also embeds the pool and the held-out images).")
    alpha: float = Field(
        default=0.05, gt=0.0, lt=1.0,
        description="False-alarm rate of the verdict (split over the signals, Bonferroni).")
    permutations: int = Field(
        default=500, ge=50, le=20000,
        description="Permutations of the MMD and class-mix tests.")
    min_images: int = Field(
        default=30, ge=5,
        description="Fewer pool or held-out images than this: no test (verdict too_few_images).")
    budget_factor: float = Field(
        default=2.0, ge=1.0, le=20.0,
        description="On drift: the round's labeling budget is multiplied by this.")
    budget_cap: float = Field(
        default=0.25, gt=0.0, le=1.0,
        description="On drift: the raised budget is at most this fraction of train+pool "
        "images (and never below the budget without drift).")
    ood_share: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="On drift: share of the budget reserved for the pool images farthest "
        "from the held-out set in embedding space (reason `drift`).")
    neighbours: int = Field(
        default=5, ge=1, le=100,
        description="An image's out-of-distribution score: the mean distance of its "
        "embedding to its this many nearest held-out embeddings.")
    seed: int = Field(default=0, description="Seed of the permutation test.")


class ScheduleConfig(_Section):
    """When the DAG runs."""

    cron: str | None = Field(default="0 2 * * *", description="Cron schedule; null for none.")
    on_new_version: bool = Field(
        default=False, description="Also run when a new dataset version is published (Asset)."
    )
    on_drift: bool = Field(
        default=False,
        description="Also run when the drift step detects drift in this dataset (Asset "
        "`hitl://drift/<dataset>`). Off by default: the round that detects drift would "
        "otherwise start the next one, and so on while the world stays changed.",
    )


class PipelineConfig(_Section):
    """One human-in-the-loop training pipeline (one DAG)."""

    dag_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,200}$", description="Airflow DAG id.")
    description: str = Field(default="", description="Shown in the Airflow UI.")
    storage: StorageConfig = StorageConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    selection: SelectionConfig = SelectionConfig()
    labeling: LabelingConfig = LabelingConfig()
    merge: MergeConfig = MergeConfig()
    drift: DriftConfig = DriftConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    config_path: str | None = Field(
        default=None, exclude=True, description="Set by the loader: the file read."
    )

    @model_validator(mode="after")
    def _fraction_policy(self) -> PipelineConfig:
        if self.labeling.completion == "all" and self.labeling.min_fraction != 1.0:
            raise ValueError("labeling.min_fraction needs labeling.completion: fraction")
        lab = self.labeling
        if lab.overlap > 0 and lab.annotators_per_task < 2:
            raise ValueError("labeling.overlap needs labeling.annotators_per_task of 2 or more")
        return self

    def digest(self) -> str:
        """sha256 of the validated config, defaults filled in (recorded with checkpoints)."""
        return hashlib.sha256(self.model_dump_json().encode("utf-8")).hexdigest()

    def resolve(self, relative: str | None) -> Path | None:
        """Resolve a path from the config against the config file's folder."""
        if relative is None:
            return None
        path = Path(os.path.expandvars(os.path.expanduser(relative)))
        if not path.is_absolute() and self.config_path:
            path = Path(self.config_path).parent / path
        return path


def _format_errors(path: str, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        given = err.get("input")
        shown = "" if isinstance(given, dict) or err["type"] == "missing" else f" (got {given!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, *, source: str = "<config>") -> PipelineConfig:
    """Validate a config already read into Python objects."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate({**data, "config_path": source})
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline YAML file.

    :param path: the YAML file.
    :raises ConfigError: naming the file, the field path and the reason.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the "
                          "file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return parse_config(data, source=path)


def check_configs(paths: list[str | os.PathLike[str]]) -> tuple[
        dict[str, PipelineConfig], list[str]]:
    """Validate pipeline files together, as the DAG file does.

    :returns: ``(configs by dag_id, errors)``: each error is the text that Airflow shows as
        the DAG file's import error (file, field path and reason); a ``dag_id`` used by an
        earlier file is an error of the later one.
    """
    configs: dict[str, PipelineConfig] = {}
    errors: list[str] = []
    for path in paths:
        try:
            config = load_config(path)
            if config.dag_id in configs:
                raise ConfigError(f"{path}: dag_id {config.dag_id!r} is used by another config "
                                  f"({configs[config.dag_id].config_path})")
            configs[config.dag_id] = config
        except ConfigError as exc:
            errors.append(str(exc))
    return configs, errors


#: The JSON Schema of the pipeline files, shipped for editors (``# yaml-language-server:
#: $schema=...`` at the top of a YAML file); ``hitl config schema`` writes it anew.
SCHEMA_FILE = Path(__file__).parent / "assets" / "pipeline.schema.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file, generated from :class:`PipelineConfig`.

    ``config_path`` is the loader's, not the user's: it is left out. The cross-field rules
    of the model validators (e.g. ``labeling.overlap`` needs ``annotators_per_task`` >= 2)
    are not expressible here; ``hitl config check`` reports them.
    """
    schema = PipelineConfig.model_json_schema()
    schema["properties"].pop("config_path", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "airflow-hitl pipeline config"
    return schema


def schema_text() -> str:
    """:func:`json_schema` as the shipped file's text."""
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None, prog: str = "hitl config") -> int:
    """``hitl config check FILE...`` and ``hitl config schema [--out FILE]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description="Check pipeline config files.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="Validate every file; print every error (file, field "
                           "and reason, as Airflow shows them); exit 1 if any file is bad.")
    check.add_argument("files", nargs="+", metavar="FILE")
    schema = sub.add_parser("schema", help="Print (or write) the JSON Schema for editors.")
    schema.add_argument("--out", help="write it to this file instead of stdout")
    args = parser.parse_args(argv)
    if args.command == "schema":
        if args.out:
            Path(args.out).write_text(schema_text(), encoding="utf-8")
        else:
            sys.stdout.write(schema_text())
        return 0
    # What the DAG file does: validate, then build each DAG (which checks more, e.g. that
    # every notifier can be built from its args), so that the errors are Airflow's own.
    from hitl_plugin.dag_factory import build_all

    built, errors = build_all(args.files)
    for config, _ in built.values():
        print(f"ok: {config.config_path} (dag_id {config.dag_id})")
    for error in errors:
        print(error, file=sys.stderr)
    bad = len(args.files) - len(built)
    print(f"{len(built)} valid, {bad} invalid", file=sys.stderr if bad else sys.stdout)
    return 1 if errors else 0


#: The Airflow Variable that sets the storage root of every pipeline without ``storage.root``.
STORAGE_ROOT_VARIABLE = "hitl_storage_root"


def storage_root(config: PipelineConfig | None = None, *,
                 variables: Callable[[str], str | None] | None = None) -> Path:
    """Return the storage root.

    In order: the config's ``storage.root``, the Airflow Variable ``hitl_storage_root`` (read
    with ``variables``, which the Airflow side passes: this module never imports Airflow),
    the ``HITL_HOME`` environment variable, then ``./.hitl``.

    :param variables: reads an Airflow Variable by key; None (outside Airflow): skip it.
    """
    if config is not None and config.storage.root:
        return config.resolve(config.storage.root)  # type: ignore[return-value]
    if variables is not None:
        value = variables(STORAGE_ROOT_VARIABLE)
        if value:
            return Path(value).absolute()
    return Path(os.environ.get("HITL_HOME") or ".hitl").absolute()
