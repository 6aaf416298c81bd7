"""The steps of a round as plain functions: what each task of the DAG does, without Airflow.

One round of a pipeline is::

    prepare -> train (+ evaluate) -> gate -> score -> select -> submit (per batch)
            -> wait -> collect -> merge [-> train again] -> report

Each step is one function here. It takes the :class:`Round` (the pipeline's config, the
storage root, and the DAG and run ids that key every file and labeling task of the round)
and typed inputs, and returns a typed result from :mod:`hitl_plugin.schemas`: small JSON
that an operator returns as XCom unchanged. The operators, the demo and the benchmarks all
drive these same functions; the domain rules live below them (``dataset/``, ``model/``,
``labeling/``), and every file a step reads or writes is named by
:class:`~hitl_plugin.paths.RoundPaths`.

Nothing heavy is imported at module level: torch, Ultralytics and pycocotools load inside
the steps that need them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from hitl_plugin import package_version
from hitl_plugin.assets_uri import drift_asset_uri
from hitl_plugin.config import COMPLETIONS, ON_TIMEOUT, PipelineConfig, load_config, storage_root
from hitl_plugin.exceptions import ArgumentError, ConfigError, DatasetError, LabelsNotReadyError
from hitl_plugin.paths import Layout, RoundPaths
from hitl_plugin.schemas import (
    REPORT_SCHEMA,
    Batch,
    CollectResult,
    Corrections,
    DriftResult,
    GateResult,
    MergeResult,
    PrepareResult,
    ReportResult,
    ScoreResult,
    SelectionManifest,
    SelectResult,
    SubmitResult,
    TrainResult,
    WaitResult,
    read_model,
    write_json_atomic,
)

if TYPE_CHECKING:
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.labeling.client import LabelStudioClient
    from hitl_plugin.labeling.wait import (
        LabelsDeadlineNearEventPayload,
        LabelsErrorEventPayload,
        LabelsReadyEventPayload,
    )

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Round:
    """One run of one pipeline: what every step needs to find its files and its data.

    :ivar config: the pipeline's validated config.
    :ivar root: the storage root.
    :ivar dag_id: the pipeline's DAG id.
    :ivar run_id: the run; with ``dag_id`` it keys the round's files and labeling tasks.
    """

    config: PipelineConfig
    root: Path
    dag_id: str
    run_id: str

    @classmethod
    def open(cls, config_path: str | None, *, dag_id: str, run_id: str,
             variables: Callable[[str], str | None] | None = None) -> Round:
        """Load the config (defaults when ``config_path`` is empty) and find the storage root.

        :param variables: reads an Airflow Variable (the storage root may come from one).
        :raises ConfigError: naming the file, the field and the reason.
        """
        config = load_config(config_path) if config_path else PipelineConfig(dag_id=dag_id)
        return cls(config, storage_root(config, variables=variables), dag_id, run_id)

    @property
    def layout(self) -> Layout:
        return Layout.at(self.root)

    @property
    def paths(self) -> RoundPaths:
        return self.layout.round(self.dag_id, self.run_id)

    @property
    def store(self) -> DatasetStore:
        from hitl_plugin.dataset.store import DatasetStore

        return DatasetStore(self.root, self.config.dataset.name)

    @property
    def key(self) -> str:
        """The round key, ``<dag_id>|<run_id>`` (idempotency of the merge)."""
        return f"{self.dag_id}|{self.run_id}"

    @property
    def project_title(self) -> str:
        """The pipeline's Label Studio project (``labeling.project_title`` or ``hitl-<dag>``)."""
        return self.config.labeling.project_title or f"hitl-{self.dag_id}"


def record_worker(rnd: Round, *, task_id: str, map_index: int | None, try_number: int | None,
                  hostname: str, queue: str | None) -> None:
    """Record which worker runs this task try (``workers/<task>.<map>.<try>.json``; the round
    report lists them). Never fails the task: a record that cannot be written is logged."""
    path = rnd.paths.worker(task_id, -1 if map_index is None else map_index, try_number or 0)
    try:
        write_json_atomic(path, {"task_id": task_id, "map_index": map_index,
                                 "try_number": try_number, "hostname": hostname,
                                 "queue": queue,
                                 "started": datetime.now(timezone.utc).isoformat()})
    except OSError as exc:
        log.warning("Could not record the worker of %s: %s", task_id, exc)


# -- prepare ------------------------------------------------------------------------------


def prepare(rnd: Round) -> PrepareResult:
    """The dataset version the round starts from; imports ``dataset.source_dir`` the first time.

    :raises DatasetError: when the dataset has no version and no source to import.
    """
    store = rnd.store
    version = store.latest()
    if version is None:
        source = rnd.config.resolve(rnd.config.dataset.source_dir)
        if source is None:
            raise DatasetError(
                f"{rnd.config.config_path}: dataset {rnd.config.dataset.name!r} has no version "
                f"under {store.dir} and dataset.source_dir is not set")
        log.info("Importing %s as the first version of %s", source, rnd.config.dataset.name)
        version = store.import_source(source)
        manifest = store.manifest(version)  # just written from validated data: no re-hash
    else:
        manifest = store.verify(version)
    log.info("Round starts from %s %s: %s", rnd.config.dataset.name, version,
             manifest["counts"])
    return {"version": version, "counts": manifest["counts"]}


# -- train + evaluate ---------------------------------------------------------------------


def warm_start(rnd: Round) -> tuple[str | None, str]:
    """The checkpoint a training starts from, and where it came from.

    In order: the pipeline's promoted checkpoint, ``model.base_checkpoint`` (``builtin``:
    the packaged asset), else None (scratch from ``model.architecture``).
    """
    from hitl_plugin.model.gate import promoted

    current = promoted(rnd.root, rnd.dag_id)
    if current and Path(current["checkpoint"]).is_file():
        return current["checkpoint"], "promoted"
    base = rnd.config.model.base_checkpoint
    if base is None or base == "":
        return None, "scratch"
    return base_weights(rnd.config), "builtin" if base == "builtin" else "path"


def base_weights(config: PipelineConfig) -> str | None:
    """``model.base_checkpoint`` as a local path (None: scratch)."""
    from hitl_plugin.model import yolo
    from hitl_plugin.model.train import BUILTIN_BASE

    base = config.model.base_checkpoint
    if base is None or base == "":
        return None
    if base == "builtin":
        if not BUILTIN_BASE.is_file():
            raise FileNotFoundError(f"the packaged base checkpoint {BUILTIN_BASE} is missing")
        return str(BUILTIN_BASE)
    return str(yolo.resolve_weights(config.resolve(base)))


def check_classes(rnd: Round, weights: str | None, source: str, names: list[str],
                  version: str) -> bool:
    """Whether the warm start detects the dataset's classes; True: its head is rebuilt.

    A base checkpoint of other classes (a COCO-pretrained ``.pt``: 80 of them) is a warm
    start for the backbone: Ultralytics builds a new head for the dataset's classes and
    carries over the weights whose shapes match; that is a warning. The pipeline's own
    promoted checkpoint detecting other classes means the dataset's classes changed under
    it: an error, since warm-starting would silently drop what it learned per class.
    """
    from hitl_plugin.model import yolo
    from hitl_plugin.model.gate import promoted

    if weights is None:
        return False
    have = yolo.checkpoint_names(weights)
    if have == names:
        return False

    def shown(classes: list[str]) -> str:
        return ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)"
                                         if len(classes) > 8 else "")

    if source == "promoted" and promoted(rnd.root, rnd.dag_id):
        raise ConfigError(
            f"the pipeline's promoted checkpoint {weights} detects {len(have)} classes "
            f"({shown(have)}) but dataset {rnd.config.dataset.name!r} {version} has "
            f"{len(names)} ({shown(names)}): the dataset's classes changed since the promotion. "
            f"Give the changed dataset a new pipeline (another dag_id), or remove "
            f"{rnd.layout.promoted_file(rnd.dag_id)} to start again from model.base_checkpoint")
    log.warning("The base checkpoint %s detects %s classes (%s); dataset %r has %s (%s): the "
                "detection head is rebuilt for the dataset's classes (the backbone's weights "
                "carry over, the per-class ones do not)", weights, len(have), shown(have),
                rnd.config.dataset.name, len(names), shown(names))
    return True


def train(rnd: Round, *, version: str | None = None, epochs: int | None = None,
          imgsz: int | None = None, name: str | None = None) -> TrainResult:
    """Train the round's model on a dataset version, then evaluate it on the held-out set.

    Resumable: the folder is the run's (a retry continues from the last epoch's checkpoint
    and starts from the same weights as the first try). The checkpoint's metadata
    (``train_result.json``) records its lineage: dataset version, config hash, package
    version, seed and warm start. An evaluation already written for the same checkpoint is
    reused.

    :param version: the dataset version to train on (default: the latest).
    :param epochs: this run's epochs (default ``training.epochs``).
    :param imgsz: this run's image size (default ``training.imgsz``).
    :param name: a second training of the round (the retrain after the merge), in a
        sub-folder of the round's model folder.
    """
    from hitl_plugin.dataset.coco import class_names
    from hitl_plugin.dataset.export import export_yolo, read_weights
    from hitl_plugin.model.evaluate import evaluate
    from hitl_plugin.model.train import train as train_model

    config, t = rnd.config, rnd.config.training
    model = rnd.paths.model(name)
    version = version or rnd.store.require_latest()
    coco = rnd.store.load(version)
    val_file = rnd.layout.val_file(config.dataset.name)
    data_yaml = export_yolo(rnd.root, config.dataset.name, version, coco,
                            json.loads(val_file.read_text(encoding="utf-8")))
    image_weights = read_weights(data_yaml)
    if model.warm_start.is_file():  # a retry must start from the same weights as the first try
        chosen = json.loads(model.warm_start.read_text(encoding="utf-8"))
        weights, source = chosen["weights"], chosen["source"]
    else:
        weights, source = warm_start(rnd)
        write_json_atomic(model.warm_start, {"weights": weights, "source": source})
    head_rebuilt = check_classes(rnd, weights, source, class_names(coco), version)
    epochs, imgsz = int(epochs or t.epochs), int(imgsz or t.imgsz)
    result = train_model(
        data_yaml, model.dir, architecture=config.model.architecture, weights=weights,
        epochs=epochs, imgsz=imgsz, batch=t.batch, device=t.device, threads=t.threads,
        seed=t.seed, plots=t.plots, image_weights=image_weights, amp=t.amp, workers=t.workers,
        metadata={
            "version": version, "weights_source": source, "data_yaml": str(data_yaml),
            "head_rebuilt": head_rebuilt,
            "weighted_images": sum(1 for w in image_weights.values() if w != 1.0),
            "lineage": {"dataset": config.dataset.name, "version": version,
                        "config_sha256": config.digest(), "package_version": package_version(),
                        "seed": t.seed, "weights": weights, "weights_source": source},
        })
    checkpoint = str(Path(result["checkpoint"]).absolute())
    metrics = None
    if model.metrics.is_file():
        metrics = json.loads(model.metrics.read_text(encoding="utf-8"))
        if metrics.get("checkpoint") != checkpoint:
            metrics = None
    if metrics is None:
        metrics = evaluate(Path(checkpoint), data_yaml, val_file, model, imgsz=imgsz,
                           device=t.device)
    log.info("Trained %s (%s epochs, warm start: %s, resumed from epoch %s); held-out "
             "mAP50-95 %.4f, mAP50 %.4f on %s images", result["checkpoint"], result["epochs"],
             source, result["resumed_from_epoch"], metrics["map50_95"], metrics["map50"],
             metrics["n_images"])
    return {**result, "train_metrics": result["metrics"], "metrics": metrics}  # type: ignore[typeddict-item]


# -- gate ---------------------------------------------------------------------------------


def approval_request(rnd: Round, *, candidate: TrainResult) -> tuple[str, str]:
    """The approval's subject and Markdown body: the candidate's held-out metrics beside
    the promoted checkpoint's, and what Approve, Reject and no answer do under the config."""
    from hitl_plugin.model.gate import approval_body, promoted

    gate_cfg = rnd.config.gate
    approval = gate_cfg.approval
    metrics = candidate.get("metrics") if isinstance(candidate, dict) else None
    body = approval_body(metrics or {}, promoted(rnd.root, rnd.dag_id), metric=gate_cfg.metric,
                         margin=gate_cfg.margin, on_reject=approval.on_reject,
                         on_timeout=approval.on_timeout,
                         timeout_hours=approval.response_timeout_hours)
    return f"Promote the new checkpoint of {rnd.dag_id}?", body


def gate(rnd: Round, *, candidate: TrainResult, approval: dict | None = None) -> GateResult:
    """Promote the candidate checkpoint if it beats the promoted one on the held-out metric.

    With ``approval`` (the approval step's answer, ``gate.require_approval``): Approve lets
    the rule above decide; Reject (or no answer with ``on_timeout: reject``) promotes
    nothing and, by ``gate.approval.on_reject``, keeps the promoted checkpoint for the rest
    of the round or ends the round: then ``ended`` says why and by whom, and ``ended.json``
    in the round folder records it.

    Idempotent: a retry after a promotion returns the same answer.
    """
    from hitl_plugin.model.gate import apply_gate, apply_rejection, read_approval

    for key in ("checkpoint", "metrics"):
        if not isinstance(candidate, dict) or key not in candidate:
            raise ArgumentError(f"candidate must be the train step's result (with {key!r}), "
                                f"got {type(candidate).__name__}")
    gate_cfg = rnd.config.gate
    answer = None
    if approval is not None:
        try:
            answer = read_approval(approval)
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        write_json_atomic(rnd.paths.approval, answer)
    if answer is not None and not answer["approved"]:
        verdict = apply_rejection(
            rnd.root, rnd.dag_id, rnd.run_id, answer=answer,
            on_reject=gate_cfg.approval.on_reject, metric=gate_cfg.metric,
            candidate_metrics=candidate["metrics"],
            timeout_hours=gate_cfg.approval.response_timeout_hours)
    else:
        verdict = apply_gate(
            rnd.root, rnd.dag_id, rnd.run_id, candidate["checkpoint"], candidate["metrics"],
            metric=gate_cfg.metric, margin=gate_cfg.margin, lineage=candidate.get("lineage"))
        verdict["ended"] = None
    if answer is not None:
        verdict["approval"] = answer
    if verdict["ended"]:
        write_json_atomic(rnd.paths.ended, {
            "ended": verdict["ended"], "reason": verdict["reason"], "step": "gate",
            "approval": answer, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        log.warning("Round %s ended at the gate: %s", rnd.run_id, verdict["reason"])
    else:
        rnd.paths.ended.unlink(missing_ok=True)  # an earlier try's rejection, answered anew
        log.info("Gate: %s (promoted: %s)", verdict["reason"], verdict["promoted"])
    return verdict  # type: ignore[return-value]


# -- score and select ---------------------------------------------------------------------


def score(rnd: Round, *, checkpoint: str, version: str | None = None,
          imgsz: int | None = None) -> ScoreResult:
    """Score every train and pool image of the version: uncertainty, suspected label errors.

    Writes ``scores.jsonl`` (one :class:`~hitl_plugin.schemas.ImageScore` per line).

    :param version: the dataset version (default: the latest).
    """
    from hitl_plugin.model.score import score_images

    t = rnd.config.training
    imgsz = imgsz or t.imgsz
    version = version or rnd.store.require_latest()
    coco = rnd.store.load(version)
    log.info("Scoring %s %s with %s at %s px", rnd.config.dataset.name, version, checkpoint,
             imgsz)
    # the drift step's inputs come from this same pass, which also predicts the held-out set
    drift_out = rnd.paths.drift_inputs if rnd.config.drift.enabled else None
    rnd.paths.drift_inputs.unlink(missing_ok=True)  # never an earlier try's
    reference = None
    if drift_out is not None:
        reference = json.loads(rnd.layout.val_file(rnd.config.dataset.name).read_text(
            encoding="utf-8"))
    if rnd.config.selection.out_of_sample_folds:
        from hitl_plugin.model.folds import score_out_of_sample

        result = score_out_of_sample(rnd, checkpoint=checkpoint, coco=coco, version=version,
                                     k=rnd.config.selection.out_of_sample_folds, imgsz=imgsz,
                                     base_weights=base_weights(rnd.config),
                                     drift_out=drift_out)
    else:
        result = score_images(checkpoint, coco, rnd.root, rnd.paths.scores,
                              selection=rnd.config.selection, imgsz=imgsz, device=t.device,
                              threads=t.threads, drift_out=drift_out, reference=reference)
    log.info("Scored %s images in %s s", result["n_images"], result["seconds"])
    sel = rnd.config.selection
    if sel.auto_accept and sel.auto_accept_threshold is None:
        from hitl_plugin.model.autoaccept import calibrate_threshold, held_out_predictions

        val = json.loads(rnd.layout.val_file(rnd.config.dataset.name).read_text(
            encoding="utf-8"))
        preds = held_out_predictions(checkpoint, val, rnd.root, rnd.paths.dir, imgsz=imgsz,
                                     device=t.device, threads=t.threads, conf=sel.conf)
        calibration = calibrate_threshold(val, preds, precision=sel.auto_accept_precision)
        write_json_atomic(rnd.paths.auto_accept, {**calibration, "checkpoint": str(checkpoint),
                                                  "target_precision": sel.auto_accept_precision})
        log.info("Auto-accept threshold calibrated on %s held-out images: %s (precision %s "
                 "on %s boxes; target %s)", len(val["images"]), calibration["threshold"],
                 calibration["held_out_precision"], calibration["held_out_boxes"],
                 sel.auto_accept_precision)
    out: ScoreResult = {"scores": result["scores"], "n_images": result["n_images"],
                        "version": version, "seconds": result["seconds"]}
    if "folds" in result:
        out["out_of_sample"] = {"folds": result["folds"],
                                "fold_seconds": result["fold_seconds"]}
    if "drift_inputs" in result:
        out["drift_inputs"] = result["drift_inputs"]
    return out


def drift(rnd: Round, *, scores: str, version: str,
          model_version: str | None = None) -> DriftResult:
    """Has the pool drifted from the held-out set's world? Write ``drift.json`` and
    ``drift.png``.

    Reads the inputs the score pass kept beside ``scores`` (``drift_inputs.npz``): box
    counts, confidences and backbone embeddings of the pool and the held-out images. Tests
    them (:func:`hitl_plugin.model.drift.detect`), and records the verdict, each signal's
    statistic and p-value, the per-image out-of-distribution scores and, on drift, what the
    select step will do (the raised budget, the share reserved for the most
    out-of-distribution images). With ``drift.enabled: false`` the report says so and the
    selection is unchanged.
    """
    from hitl_plugin.model.drift import DriftInputs, detect

    cfg = rnd.config.drift
    inputs_file = Path(scores).with_name(rnd.paths.drift_inputs.name)
    base = {"schema_version": REPORT_SCHEMA, "dag_id": rnd.dag_id, "run_id": rnd.run_id,
            "dataset": rnd.config.dataset.name, "version": version,
            "model_version": model_version, "enabled": cfg.enabled,
            "settings": cfg.model_dump(),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not cfg.enabled:
        report = {**base, "verdict": "disabled", "detected": False,
                  "reason": "drift.enabled is false", "signals": {}, "ood": {}}
    elif not inputs_file.is_file():
        raise DatasetError(f"{inputs_file} is missing: the score step keeps the drift step's "
                           "inputs when drift.enabled is true (was it scored with another "
                           "config?)")
    else:
        inputs = DriftInputs.load(inputs_file)
        before = drift_tested_before(rnd)
        fresh = inputs.without_pool(before)
        left_over = len(inputs.of("pool")) - len(fresh.of("pool"))
        report = {**base, **detect(fresh, alpha=cfg.alpha, permutations=cfg.permutations,
                                   min_images=cfg.min_images, neighbours=cfg.neighbours,
                                   seed=cfg.seed), "n_pool_tested_before": left_over}
        if left_over:
            report["reason"] += (f"; {left_over} more pool image(s) left out: an earlier "
                                 "round tested them (each pool image is tested once, when "
                                 "it arrives)")
        report["action"] = {  # what the select step does with it (the manifest records it)
            "budget_factor": cfg.budget_factor if report["detected"] else 1.0,
            "budget_cap": cfg.budget_cap, "ood_share": cfg.ood_share if report["detected"]
            else 0.0,
            "asset": drift_asset_uri(rnd.config.dataset.name) if report["detected"] else None}
    path = write_json_atomic(rnd.paths.drift, report)
    if report.get("plots"):  # people see the drift while the round's labeling goes on
        from hitl_plugin.report import plot_drift

        try:
            plot_drift(rnd.paths.drift_plot, report)
        except Exception as exc:  # noqa: BLE001 - a plot must not fail the round
            log.warning("Could not draw %s: %s", rnd.paths.drift_plot, exc)
    signals = report.get("signals", {})
    p_values = {k: v.get("p_value") for k, v in signals.items()}
    shown = ", ".join(f"{k} {v['test']} stat {v['statistic']} p {v['p_value']:.3g}"
                      for k, v in signals.items() if v.get("p_value") is not None)
    log.info("Drift: %s (%s pool vs %s held-out images%s): %s -> %s", report["verdict"],
             report.get("n_pool", 0), report.get("n_reference", 0),
             f"; {shown}" if shown else "", report["reason"], path)
    if report["detected"]:
        log.warning("Drift detected in %s: the select step multiplies the budget by %s (at "
                    "most %s of the images) and reserves %s%% of it for the pool images least "
                    "like the held-out set", rnd.config.dataset.name, cfg.budget_factor,
                    cfg.budget_cap, round(100 * cfg.ood_share))
    return {"drift": str(path), "verdict": report["verdict"], "detected": report["detected"],
            "p_values": p_values}


def select(rnd: Round, *, scores: str, version: str, model_version: str,
           budget: int | float | None = None, strategy: str | None = None,
           drift: str | None = None) -> SelectResult:
    """Choose the round's images from the scores; write ``selection.json``.

    :param budget: images to select, a count or a fraction in (0, 1) (default: the config).
    :param strategy: one of :data:`~hitl_plugin.config.STRATEGIES` (default: the config).
    :param drift: the drift step's ``drift.json``: on drift, the budget rises and a share
        goes to the most out-of-distribution pool images (``drift`` config).
    :return: the selection's path and counts, and the fan-out ``batches`` of
        ``labeling.batch_size`` images each.
    """
    from hitl_plugin.model.autoaccept import acceptance
    from hitl_plugin.model.select import batches, select_samples

    coco = rnd.store.load(version)
    lab = rnd.config.labeling
    gold = {}
    if lab.gold or lab.gold_from_consensus:
        from hitl_plugin.labeling.gold import gold_images

        gold = gold_images(rnd.config, coco)
    calibration = None
    calibration_file = Path(scores).with_name(rnd.paths.auto_accept.name)
    if calibration_file.is_file():
        calibration = json.loads(calibration_file.read_text(encoding="utf-8"))
    manifest = select_samples(
        scores, coco, selection=rnd.config.selection, dag_id=rnd.dag_id, run_id=rnd.run_id,
        dataset=rnd.config.dataset.name, version=version, model_version=model_version,
        budget=budget, strategy=strategy,
        auto_accept=acceptance(rnd.config.selection, calibration=calibration,
                               model_version=model_version), exclude=gold,
        drift=drift_plan(rnd, drift) if drift else None)
    if gold or (lab.annotators_per_task > 1 and lab.overlap > 0):
        from hitl_plugin.labeling.gold import mix_gold

        manifest = mix_gold(manifest, rnd.config, coco, scores, gold=gold)
    path = write_json_atomic(rnd.paths.selection, manifest)
    by_reason = dict(Counter(item.reason for item in manifest.items))
    log.info("Selected %s images (%s, budget %s): %s; %s gold, %s answered by %s people",
             len(manifest.items), manifest.strategy, manifest.budget, by_reason,
             len(manifest.gold), sum(1 for i in manifest.items if i.annotators > 1),
             lab.annotators_per_task)
    if manifest.auto_accept is not None:
        log.info("Auto-accept (threshold %s, %s): %s pool image(s) labeled by the model alone, "
                 "%s box(es)", manifest.auto_accept.threshold, manifest.auto_accept.source,
                 len(manifest.auto_accepted), sum(len(a.boxes) for a in manifest.auto_accepted))
    return {"selection": str(path), "n_selected": len(manifest.items), "by_reason": by_reason,
            "batches": batches(len(manifest.items), rnd.config.labeling.batch_size, path)}


def drift_tested_before(rnd: Round) -> set[int]:
    """The pool images of the round's dataset that another round's drift step tested (the
    ids of its OOD scores), in any pipeline's rounds under the storage root."""
    name, own = rnd.config.dataset.name, rnd.paths.drift
    tested: set[int] = set()
    for dag_id in rnd.layout.pipelines():
        for paths in rnd.layout.rounds(dag_id):
            if paths.drift == own or not paths.drift.is_file():
                continue
            try:
                report = json.loads(paths.drift.read_text(encoding="utf-8"))
                if report.get("dataset") == name:
                    tested.update(int(k) for k in report.get("ood") or {})
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("Could not read %s (its pool images count as untested): %s",
                            paths.drift, exc)
    return tested


def drift_plan(rnd: Round, report_path: str):
    """The drift step's report as the selection's :class:`~hitl_plugin.model.select.DriftPlan`."""
    from hitl_plugin.model.select import DriftPlan

    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    cfg = rnd.config.drift
    return DriftPlan(detected=bool(report.get("detected")), report=str(report_path),
                     budget_factor=cfg.budget_factor, budget_cap=cfg.budget_cap,
                     ood_share=cfg.ood_share,
                     ood={int(k): float(v) for k, v in (report.get("ood") or {}).items()})


# -- labeling -----------------------------------------------------------------------------


def checked_batch(batch: object) -> Batch:
    """``batch`` if it is one of the select step's batches, else :class:`ArgumentError`."""
    if not isinstance(batch, dict) or not {"selection", "start", "stop"} <= set(batch):
        raise ArgumentError(f"batch must be {{'selection', 'start', 'stop'}}, got {batch!r}")
    return batch  # type: ignore[return-value]


def submit(rnd: Round, client: LabelStudioClient, *, batch: Batch,
           model_version: str | None = None) -> SubmitResult:
    """Send one batch of the selection to Label Studio, idempotently.

    Finds or creates the pipeline's project (classes, local-files storage unless the
    connection has an ``image_url_prefix``, model version),
    then imports the batch's samples that the project does not hold yet, with the model's
    boxes as pre-annotations, in one bulk import. The key of a task is
    ``(dag id, run id, image id)``; ``submissions/<start>-<stop>.json`` records the batch.

    :param batch: ``{"selection", "start", "stop"}`` (one of the select step's batches).
    :param model_version: the model behind the predictions (default: the selection's).
    """
    from hitl_plugin.labeling.project import ensure_project_info
    from hitl_plugin.labeling.submit import submit_batch

    batch = checked_batch(batch)
    selection = read_model(SelectionManifest, batch["selection"])
    model_version = model_version or selection.model_version
    class_names = [c.name for c in sorted(selection.categories, key=lambda c: c.id)]
    project = ensure_project_info(
        client, title=rnd.project_title, class_names=class_names,
        images_root=rnd.layout.images, model_version=model_version, paths=rnd.paths,
        image_url_prefix=client.image_url_prefix)
    result = submit_batch(
        client, project_id=project["id"], selection=selection, start=int(batch["start"]),
        stop=int(batch["stop"]), dag_id=rnd.dag_id, run_id=rnd.run_id,
        model_version=model_version, paths=rnd.paths,
        sync_model_version=not project["model_version_ok"],
        image_url_prefix=client.image_url_prefix)
    log.info("Submitted %s new tasks (%s already present) to project %s",
             result["submitted"], result["already_present"], project["id"])
    return result  # type: ignore[return-value]


class WaitPlan(TypedDict):
    """What the wait needs: the round's tasks, the completion policy, the absolute deadline."""

    project_id: int
    expected: int | None
    dag_id: str
    run_id: str
    completion: str
    min_fraction: float
    on_timeout: str
    deadline: str
    poke_interval: float
    #: the most people a task of the round needs (``labeling.annotators_per_task``)
    annotators: int
    #: when to warn that the deadline is near (``notifications.near_deadline_hours``, with a
    #: notifier that takes ``deadline_near``); None: no warning
    warn_at: NotRequired[str | None]


def plan_wait(rnd: Round, *, task_id: str, submissions: Iterable[SubmitResult] | None = None,
              project_id: int | str | None = None, completion: str | None = None,
              min_fraction: float | None = None, on_timeout: str | None = None,
              timeout_s: float | None = None, poke_interval: float | None = None,
              try_series: int | None = None) -> WaitPlan:
    """The wait's settings: the given values, else the config's ``labeling`` section.

    The deadline is absolute: now + timeout at the first try, recorded in the round folder
    and reused by the automatic retries of the same try series (``try_series``: Airflow's
    ``max_tries``, which a manual clear raises, so that a clear starts a new deadline).

    :raises ArgumentError: for a value outside its choices, or no single project.
    """
    from hitl_plugin.labeling.submit import project_and_expected
    from hitl_plugin.labeling.wait import deadline_after, to_deadline, warn_at

    lab = rnd.config.labeling
    completion = completion or lab.completion
    if completion not in COMPLETIONS:
        raise ArgumentError(f"completion must be one of {COMPLETIONS}, got {completion!r}")
    on_timeout = on_timeout or lab.on_timeout
    if on_timeout not in ON_TIMEOUT:
        raise ArgumentError(f"on_timeout must be one of {ON_TIMEOUT}, got {on_timeout!r}")
    min_fraction = lab.min_fraction if min_fraction is None else float(min_fraction)
    if not 0.0 < min_fraction <= 1.0:
        raise ArgumentError(f"min_fraction must be in (0, 1], got {min_fraction}")
    project, expected = project_and_expected(submissions, project_id)
    seconds = float(timeout_s) if timeout_s is not None else lab.timeout_hours * 3600.0

    path = rnd.paths.wait_deadline(task_id)
    deadline = None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("max_tries") == try_series and saved.get("timeout_s") == seconds:
            deadline = to_deadline(saved["deadline"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if deadline is None:
        deadline = deadline_after(seconds)
        write_json_atomic(path, {"deadline": deadline.isoformat(), "timeout_s": seconds,
                                 "max_tries": try_series})
    notes = rnd.config.notifications
    warn = warn_at(deadline, timeout_s=seconds,
                   near_s=(notes.near_deadline_hours or 0) * 3600.0
                   if notes.for_event("deadline_near") else None)
    return {"project_id": project, "expected": expected, "dag_id": rnd.dag_id,
            "run_id": rnd.run_id, "completion": completion, "min_fraction": min_fraction,
            "on_timeout": on_timeout, "deadline": deadline.isoformat(),
            "poke_interval": float(poke_interval if poke_interval is not None
                                   else lab.poke_interval),
            "annotators": lab.annotators_per_task if _overlapped(rnd) else 1,
            "warn_at": warn.isoformat() if warn is not None else None}


def _overlapped(rnd: Round) -> bool:
    """Whether the round sends any task to several people (overlap or gold)."""
    lab = rnd.config.labeling
    return lab.annotators_per_task > 1 and bool(lab.overlap > 0 or lab.gold
                                                 or lab.gold_from_consensus)


def check_wait(client: LabelStudioClient, plan: WaitPlan, *, now: datetime | None = None
               ) -> (LabelsReadyEventPayload | LabelsErrorEventPayload
                     | LabelsDeadlineNearEventPayload | None):
    """Count the round's finished tasks once and apply the completion policy.

    :return: the event that ends the wait; a ``deadline_near`` event when the plan's
        ``warn_at`` passed with tasks left (the wait goes on); or None to wait on.
    """
    from hitl_plugin.labeling.client import round_counts_sync
    from hitl_plugin.labeling.wait import decide, near_deadline, to_deadline

    counts = round_counts_sync(client, plan["project_id"], plan["dag_id"], plan["run_id"],
                               plan.get("annotators", 1))
    log.info("Round %s: %s/%s tasks done (%s annotated, %s skipped)", plan["run_id"],
             counts["completed"], max(counts["total"], plan["expected"] or 0),
             counts["annotated"], counts["skipped"])
    now = now or datetime.now(timezone.utc)
    deadline = to_deadline(plan["deadline"])
    event = decide(counts, expected=plan["expected"], completion=plan["completion"],
                   min_fraction=plan["min_fraction"], on_timeout=plan["on_timeout"],
                   now=now, deadline=deadline)
    if event is None and plan.get("warn_at"):
        return near_deadline(counts, expected=plan["expected"],
                             warn=to_deadline(plan["warn_at"]), now=now, deadline=deadline)
    return event


def wait_error(exc: Exception, plan: WaitPlan, *, conn_id: str,
               now: datetime | None = None) -> LabelsErrorEventPayload | None:
    """A failed poll of the wait: the event that ends it, or None to poll on (the trigger's
    rule, :func:`hitl_plugin.labeling.wait.error_event`)."""
    from hitl_plugin.labeling.wait import error_event, to_deadline

    return error_event(exc, conn_id=conn_id, project_id=plan["project_id"],
                       deadline=to_deadline(plan["deadline"]), expected=plan["expected"],
                       now=now)


def finish_wait(event: dict, project_id: int | None) -> WaitResult:
    """The wait's result from its final event; an error event raises.

    :raises LabelsNotReadyError: naming the kind of failure (timeout, service_unavailable,
        auth, not_found, config) and the service's words.
    """
    if not isinstance(event, dict) or event.get("status") not in ("success", "partial"):
        kind = event.get("error_type", "unknown") if isinstance(event, dict) else "unknown"
        error = event.get("error", event) if isinstance(event, dict) else event
        raise LabelsNotReadyError(f"Labeling round not ready ({kind}): {error}")
    log.info("%s", event.get("message", ""))
    return {"project_id": project_id, "total": event["total"],  # type: ignore[typeddict-item]
            "completed": event["completed"], "annotated": event["annotated"],
            "skipped": event["skipped"], "fraction": event["fraction"],
            "complete": event["status"] == "success", "deadline": event["deadline"]}


def collect(rnd: Round, client: LabelStudioClient, *, selection: str,
            submissions: Iterable[SubmitResult] | None = None,
            project_id: int | str | None = None) -> CollectResult:
    """Read the round's finished tasks back as validated corrections (``corrections.json``).

    ``pending`` counts selected images without an answer, whose labels stay as they were.
    """
    from hitl_plugin.labeling.collect import collect_corrections
    from hitl_plugin.labeling.submit import project_and_expected

    manifest = read_model(SelectionManifest, selection)
    project, _ = project_and_expected(submissions, project_id)
    lab = rnd.config.labeling
    corrections = collect_corrections(client, project_id=project, dag_id=rnd.dag_id,
                                      run_id=rnd.run_id, selection=manifest,
                                      empty_answer=lab.empty_answer,
                                      min_agreement=lab.min_agreement,
                                      min_accuracy=lab.min_accuracy)
    path = write_json_atomic(rnd.paths.corrections, corrections)
    labeled = sum(1 for c in corrections.items if c.status == "labeled")
    skipped = sum(1 for c in corrections.items if c.status == "skipped")
    answered = {c.image_id for c in corrections.items} | {
        r.image_id for r in corrections.rejected if r.image_id is not None} | {
        h.image_id for h in corrections.held} | {g.image_id for g in corrections.gold}
    pending = sum(1 for s in manifest.items if s.image_id not in answered)
    log.info("Corrections: %s labeled, %s skipped, %s rejected, %s held, %s gold task(s) "
             "scored, %s pending -> %s", labeled, skipped, len(corrections.rejected),
             len(corrections.held), len(corrections.gold), pending, path)
    return {"corrections": str(path), "labeled": labeled, "skipped": skipped,
            "rejected": len(corrections.rejected), "pending": pending,
            "held": len(corrections.held), "gold": len(corrections.gold)}


# -- merge and report ---------------------------------------------------------------------


def merge(rnd: Round, *, corrections: str, base_version: str | None = None) -> MergeResult:
    """Merge the round's validated corrections into a new immutable dataset version.

    Idempotent per round key (a retry returns the version already published); writes the
    merge report. The caller emits the dataset Asset event.

    :param corrections: the collect step's ``corrections.json``.
    :param base_version: the version the round started from (default: the corrections').
    """
    from hitl_plugin.dataset.merge import merge_corrections

    parsed = read_model(Corrections, corrections)
    if (parsed.dag_id, parsed.run_id) != (rnd.dag_id, rnd.run_id):
        log.warning("Merging corrections of %s/%s in run %s/%s", parsed.dag_id, parsed.run_id,
                    rnd.dag_id, rnd.run_id)
    merge_cfg = rnd.config.merge
    result = merge_corrections(
        rnd.store, base_version=base_version or parsed.version, corrections=parsed,
        round_key=rnd.key, human_weight=merge_cfg.human_weight, decay=merge_cfg.decay,
        report_path=rnd.paths.merge_report, model_weight=merge_cfg.model_weight)
    log.info("Dataset %s %s (parent %s): %s images corrected, %s labeled from the pool, "
             "%s skipped, %s conflict(s), %s rejected; report %s", rnd.config.dataset.name,
             result["version"], result["parent"], result["images_corrected"],
             result["pool_labeled"], result["skipped"], result["conflicts"],
             result["rejected"], result["report"])
    return result  # type: ignore[return-value]


def report(rnd: Round, *, base_version: str, train: TrainResult, gate: GateResult,
           merge: MergeResult, retrain: TrainResult | None = None) -> ReportResult:
    """Write the round's summary (``report.json``) and plots (``report.png``, and
    ``drift.png`` after a drift test); log the text."""
    from hitl_plugin.report import write_round_report

    rep = write_round_report(rnd.layout, rnd.config, dag_id=rnd.dag_id, run_id=rnd.run_id,
                             base_version=base_version, train=train, gate=gate, merge=merge,
                             retrain=retrain or None)
    for line in rep["text"].splitlines():
        log.info("%s", line)
    return {"report": rep["report"], "plot": rep["plot"]}


__all__ = ["Round", "WaitPlan", "approval_request", "check_wait", "checked_batch", "collect",
           "drift", "finish_wait", "gate", "wait_error", "merge", "plan_wait", "prepare",
           "report", "score", "select", "submit", "train", "warm_start"]
