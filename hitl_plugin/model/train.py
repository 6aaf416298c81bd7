"""Train a YOLO detector offline, one checkpoint per epoch, resumable after a crash.

:func:`train` wraps ``ultralytics.YOLO(...).train`` with what a pipeline needs:

- no network (:mod:`hitl_plugin.model.yolo`, the Ultralytics adapter), absolute
  ``project``/``name``;
- on a GPU: mixed precision (its check runs offline) and dataloader workers from the
  machine; on the CPU: FP32, no worker processes, torch threads from the free cores;
- one line per epoch in ``<out_dir>/epochs.jsonl`` (losses, validation metrics, checkpoint
  path, time) and a log line for the Airflow task log;
- resume: an unfinished ``last.pt`` (optimizer state, ``epoch >= 0``) continues where it
  stopped; a finished one returns the earlier result (``resume=True`` on a stripped
  checkpoint would start a new default training on coco8 with a download);
- per-image sampling weights (human-verified images count more): a ``DetectionTrainer``
  subclass draws the main image of each sample with a ``WeightedRandomSampler`` and the
  mosaic partner images with the same weights.

The round's training step (:func:`hitl_plugin.steps.train`) picks the data, the warm start
and the folder, and calls :func:`train`. Every file of the training folder is named by
:class:`hitl_plugin.paths.ModelPaths`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from hitl_plugin.model import yolo
from hitl_plugin.paths import ModelPaths
from hitl_plugin.schemas import TRAIN_RESULT_SCHEMA, write_json_atomic

log = logging.getLogger(__name__)

BUILTIN_BASE = Path(__file__).resolve().parent.parent / "assets" / "base_yolov8n.pt"


# -- threads and weights ------------------------------------------------------------------


def choose_threads(threads: int, *, adapt: bool = True) -> int:
    """Torch CPU threads to use: at most ``threads`` and the CPUs, fewer when others are busy.

    Measured here (2 cores, load average ~4.5 from other trainings): YOLOv8n at 160 px,
    200 images, took 43-114 s per epoch with 2 threads and 9-11 s with 1, because torch's
    OpenMP threads spin-wait for a core another process holds. So with ``adapt`` the count
    is capped at the cores the 1-minute load average leaves free (never below 1).
    """
    cpus = os.cpu_count() or 1
    threads = max(1, min(int(threads), cpus))
    if not adapt or threads == 1:
        return threads
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return threads
    free = max(1, int(cpus - load + 0.5))
    if free < threads:
        log.info("load average %.1f on %s CPUs: training with %s torch thread(s) instead of %s",
                 load, cpus, free, threads)
    return min(threads, free)


def sample_weights(im_files: list[str], image_weights: dict[str, float] | None) -> list[float]:
    """The sampling weight of each dataset image, in ``im_files`` order.

    Keys of ``image_weights`` may be the exact path Ultralytics lists, its real path, or the
    file stem (the COCO image id in our exports); missing images weigh 1.0.
    """
    if not image_weights:
        return [1.0] * len(im_files)
    by_real = {os.path.realpath(k): v for k, v in image_weights.items()}
    by_stem = {Path(k).stem: v for k, v in image_weights.items()}
    out = []
    for f in im_files:
        w = image_weights.get(f)
        if w is None:
            w = by_real.get(os.path.realpath(f))
        if w is None:
            w = by_stem.get(Path(f).stem, 1.0)
        out.append(max(float(w), 0.0))
    if not any(out):
        raise ValueError("every sampling weight is zero")
    return out


# -- checkpoints --------------------------------------------------------------------------


def read_epochs(out_dir: Path) -> list[dict]:
    """The per-epoch records, one per epoch (a rerun epoch keeps its latest record)."""
    path = ModelPaths(Path(out_dir)).epochs
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a torn last line after a kill
            continue
        rows[int(row["epoch"])] = row
    return [rows[k] for k in sorted(rows)]


# -- training -----------------------------------------------------------------------------


def _result(paths: ModelPaths, epochs: int, resumed: int | None, metrics: dict,
            seconds: float, device: str, metadata: dict | None) -> dict:
    best = paths.best if paths.best.exists() else paths.last
    rows = read_epochs(paths.dir)
    if not metrics and rows:
        metrics = {k: rows[-1].get(k) for k in yolo.METRIC_KEYS.values()}
    return {
        "schema_version": TRAIN_RESULT_SCHEMA,
        "checkpoint": str(best),
        "last": str(paths.last),
        "model_dir": str(paths.dir),
        "epochs": epochs,
        "epochs_recorded": len(rows),
        "resumed_from_epoch": resumed,
        "metrics": metrics,
        "seconds": round(seconds, 2),
        "device": device,
        **(metadata or {}),
    }


def train(
    data_yaml: Path,
    out_dir: Path,
    *,
    architecture: str = "yolov8n.yaml",
    weights: str | Path | None = None,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str = "auto",
    threads: int = 2,
    seed: int = 0,
    plots: bool = False,
    image_weights: dict[str, float] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    weight_mosaic: bool = True,
    adapt_threads: bool = True,
    extra_args: dict | None = None,
    metadata: dict | None = None,
    amp: bool | None = None,
    workers: int | None = None,
) -> dict:
    """Train (or resume, or return the finished result of) one training in ``out_dir``.

    :param data_yaml: Ultralytics ``data.yaml``.
    :param out_dir: owns ``train/weights/{last,best}.pt``, ``epochs.jsonl`` and
        ``train_result.json`` (see :class:`~hitl_plugin.paths.ModelPaths`); the same folder
        resumes an interrupted training.
    :param architecture: model YAML used when ``weights`` is None (training from scratch).
    :param weights: a local ``.pt`` to warm-start from (never downloaded).
    :param image_weights: image path or stem -> sampling weight.
    :param on_epoch: called with each epoch's record (exceptions are logged, not raised).
    :param threads: torch CPU threads (see :func:`choose_threads`; ``adapt_threads=False``
        uses exactly this many).
    :param metadata: more fields for the result and ``train_result.json`` (the lineage).
    :param amp: mixed precision; None: on a GPU only.
    :param workers: dataloader workers on a GPU; None: from the machine
        (:func:`~hitl_plugin.model.yolo.loader_workers`).
    :return: ``{"schema_version", "checkpoint", "last", "model_dir", "epochs",
        "epochs_recorded", "resumed_from_epoch", "metrics", "seconds", "device", ...}``.
    """
    paths = ModelPaths(Path(out_dir).absolute())
    paths.dir.mkdir(parents=True, exist_ok=True)
    data_yaml = Path(data_yaml).absolute()
    ultralytics = yolo.import_ultralytics()
    device = yolo.resolve_device(device)
    if device == "cpu":
        threads = choose_threads(threads, adapt=adapt_threads)
        yolo.set_threads(threads)
    amp = device != "cpu" if amp is None else bool(amp)
    workers = yolo.loader_workers(device, workers)
    weighted = bool(image_weights) and any(float(w) != 1.0 for w in image_weights.values())
    trainer_cls = yolo.make_trainer_class(
        (lambda files: sample_weights(files, image_weights)) if weighted else None,
        threads=threads, seed=seed, weight_mosaic=weight_mosaic)
    recorder = yolo.epoch_callback(paths.epochs, on_epoch)
    started = time.time()

    def finish(epochs_done: int, resumed: int | None, metrics: dict) -> dict:
        result = _result(paths, epochs_done, resumed, metrics, time.time() - started, device,
                         metadata)
        write_json_atomic(paths.result, result)
        return result

    if paths.last.exists():
        state = yolo.checkpoint_state(paths.last)
        if state["state"] == "finished" and paths.result.is_file():
            done = json.loads(paths.result.read_text(encoding="utf-8"))
            log.info("training in %s already finished; returning its result", paths.dir)
            return done
        if state["state"] in ("finished", "unstripped_final"):
            log.info("training in %s finished (epoch %s of %s); finalizing", paths.dir,
                     state["epoch"] + 1, state["epochs"])
            for f in (paths.last, paths.best):
                if f.exists() and yolo.checkpoint_state(f)["state"] != "finished":
                    yolo.strip_optimizer(f)
            started = time.time()
            return finish(state["epochs"] or epochs, None, {})
        if state["state"] == "resumable":
            resumed_from = state["epoch"] + 1
            log.info("resuming training in %s at epoch %s of %s", paths.dir, resumed_from + 1,
                     state["epochs"])
            model = ultralytics.YOLO(str(paths.last))
            model.add_callback("on_fit_epoch_end", recorder)
            metrics = model.train(
                resume=True, trainer=trainer_cls, data=str(data_yaml), device=device,
                workers=workers, plots=plots,
            )
            return finish(state["epochs"], resumed_from, yolo.final_metrics(metrics))
        log.warning("discarding the unreadable training in %s and starting again", paths.run_dir)
        shutil.rmtree(paths.run_dir, ignore_errors=True)
    paths.epochs.unlink(missing_ok=True)  # records of a training that left no checkpoint

    if weights is not None:
        model = ultralytics.YOLO(str(yolo.resolve_weights(weights)))
    else:
        model = ultralytics.YOLO(_architecture_path(architecture))
    model.add_callback("on_fit_epoch_end", recorder)
    log.info("training %s on %s: %s epochs at %s px, batch %s, device %s, mixed precision "
             "%s, %s dataloader worker(s)", weights or architecture, data_yaml, epochs, imgsz,
             batch, device, "on" if amp else "off", workers)
    args = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
        workers=workers, seed=seed, plots=plots, amp=amp,
        project=str(paths.dir), name=paths.run_dir.name, exist_ok=True, verbose=False,
        val=True, pretrained=weights is not None,
    )
    args.update(extra_args or {})
    metrics = model.train(trainer=trainer_cls, **args)
    return finish(epochs, None, yolo.final_metrics(metrics))


def _architecture_path(architecture: str) -> str:
    """A model YAML: a path, one of ours in ``model/cfg``, or an Ultralytics built-in name."""
    if not architecture.endswith((".yaml", ".yml")):
        raise ValueError(
            f"architecture {architecture!r} must be a model YAML (a .pt name would be downloaded)"
        )
    ours = Path(__file__).resolve().parent / "cfg" / architecture
    if ours.is_file():
        return str(ours)
    return architecture
