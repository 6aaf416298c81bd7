"""Operators that score a dataset version with the model and choose what people label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from hitl_plugin.operators._args import blank, optional_int

if TYPE_CHECKING:
    from airflow.sdk import Context

SCORES_FILE = "scores.jsonl"


def _path_of(value: Any, key: str, what: str) -> str:
    """A path given directly, or under ``key`` in an upstream task's XCom dict."""
    if isinstance(value, dict):
        value = value.get(key)
    if blank(value) or not isinstance(value, str):
        raise AirflowException(f"{what}: expected a path or a dict with {key!r}, got {value!r}")
    return value


def _budget(value: Any) -> int | float | None:
    """A count, or a fraction in (0, 1); templated values arrive as text."""
    if blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AirflowException(f"budget must be a count or a fraction, got {value!r}") from None
    if number < 0:
        raise AirflowException(f"budget must be >= 0, got {value!r}")
    return number if 0.0 < number < 1.0 else int(number)


def _model_version(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("model_version", "checkpoint"):
            if not blank(value.get(key)):
                return str(value[key])
        raise AirflowException(f"model_version: cannot read a version from {sorted(value)}")
    if blank(value):
        raise AirflowException("model_version is required")
    return str(value)


class ScoreSamplesOperator(BaseOperator):
    """Score every train and pool image of a dataset version with a checkpoint.

    Writes ``scores.jsonl`` (one :class:`hitl_plugin.schemas.ImageScore` per line:
    uncertainty, suspected label errors, the model's boxes) into the round folder and returns
    ``{"scores": path, "n_images": n, "version": v}``.

    :param config_path: the pipeline YAML file.
    :param checkpoint: the model: a ``.pt`` path, or an upstream XCom dict holding one under
        ``checkpoint``.
    :param version: the dataset version (default: the latest).
    :param imgsz: inference size (default: ``training.imgsz``).
    """

    template_fields: Sequence[str] = ("config_path", "checkpoint", "version", "imgsz")

    def __init__(
        self,
        *,
        config_path: str,
        checkpoint: Any,
        version: str | None = None,
        imgsz: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        self.config_path = config_path
        self.checkpoint = checkpoint
        self.version = version
        self.imgsz = imgsz

    def execute(self, context: Context) -> dict:
        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.dataset.store import DatasetStore
        from hitl_plugin.model.score import score_images
        from hitl_plugin.paths import Layout

        config = load_config(self.config_path)
        root = storage_root(config)
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        checkpoint = _path_of(self.checkpoint, "checkpoint", "checkpoint")
        imgsz = optional_int(self.imgsz, "imgsz") or config.training.imgsz
        store = DatasetStore(root, config.dataset.name)
        version = None if blank(self.version) else str(self.version)
        version = version or store.require_latest()
        coco = store.load(version)
        out = Layout.at(root).round_dir(dag_id, run_id) / SCORES_FILE
        self.log.info("Scoring %s %s with %s at %s px", config.dataset.name, version,
                      checkpoint, imgsz)
        result = score_images(
            checkpoint, coco, root, out, selection=config.selection, imgsz=imgsz,
            device=config.training.device, threads=config.training.threads)
        self.log.info("Scored %s images in %s s", result["n_images"], result["seconds"])
        return {"scores": result["scores"], "n_images": result["n_images"], "version": version}


class SelectSamplesOperator(BaseOperator):
    """Choose the round's images from the scores and write ``selection.json``.

    Returns ``{"selection": path, "n_selected": n, "by_reason": {reason: n}, "batches":
    [{"selection": path, "start": i, "stop": j}, ...]}``; the submit step is mapped over
    ``batches`` (``labeling.batch_size`` images each).

    :param config_path: the pipeline YAML file.
    :param scores: the scores file, or the score step's XCom dict.
    :param version: the dataset version that was scored.
    :param model_version: the model behind the scores (a name, or the gate's XCom dict).
    :param budget: images to select, a count or a fraction in (0, 1) (default: the config).
    :param strategy: ``hybrid``, ``label_error``, ``uncertainty`` or ``random`` (default:
        the config).
    """

    template_fields: Sequence[str] = (
        "config_path", "scores", "version", "model_version", "budget", "strategy")

    def __init__(
        self,
        *,
        config_path: str,
        scores: Any,
        version: Any,
        model_version: Any,
        budget: int | float | str | None = None,
        strategy: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not config_path:
            raise ValueError("config_path is required")
        self.config_path = config_path
        self.scores = scores
        self.version = version
        self.model_version = model_version
        self.budget = budget
        self.strategy = strategy

    def execute(self, context: Context) -> dict:
        from collections import Counter

        from hitl_plugin.config import load_config, storage_root
        from hitl_plugin.dataset.store import DatasetStore
        from hitl_plugin.model.select import STRATEGIES, batches, select_samples, write_selection
        from hitl_plugin.paths import Layout

        config = load_config(self.config_path)
        root = storage_root(config)
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        scores = _path_of(self.scores, "scores", "scores")
        version = self.version.get("version") if isinstance(self.version, dict) else self.version
        if blank(version):
            raise AirflowException("version is required")
        strategy = None if blank(self.strategy) else str(self.strategy)
        if strategy is not None and strategy not in STRATEGIES:
            raise AirflowException(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        coco = DatasetStore(root, config.dataset.name).load(str(version))
        manifest = select_samples(
            scores, coco, selection=config.selection, dag_id=dag_id, run_id=run_id,
            dataset=config.dataset.name, version=str(version),
            model_version=_model_version(self.model_version), budget=_budget(self.budget),
            strategy=strategy)
        path = write_selection(manifest, Layout.at(root).round_dir(dag_id, run_id))
        by_reason = dict(Counter(item.reason for item in manifest.items))
        self.log.info("Selected %s images (%s, budget %s): %s", len(manifest.items),
                      manifest.strategy, manifest.budget, by_reason)
        return {
            "selection": str(path),
            "n_selected": len(manifest.items),
            "by_reason": by_reason,
            "batches": batches(len(manifest.items), config.labeling.batch_size, path),
        }
