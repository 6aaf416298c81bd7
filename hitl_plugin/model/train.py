"""Train a YOLO detector offline, one checkpoint per epoch, resumable after a crash.

:func:`train` wraps ``ultralytics.YOLO(...).train`` with what a pipeline needs:

- no network (:mod:`hitl_plugin.model.offline`), ``amp=False``, absolute ``project``/``name``;
- one line per epoch in ``<out_dir>/epochs.jsonl`` (losses, validation metrics, checkpoint
  path, time) and a log line for the Airflow task log;
- resume: an unfinished ``last.pt`` (optimizer state, ``epoch >= 0``) continues where it
  stopped; a finished one returns the earlier result (``resume=True`` on a stripped
  checkpoint would start a new default training on coco8 with a download);
- per-image sampling weights (human-verified images count more): a ``DetectionTrainer``
  subclass draws the main image of each sample with a ``WeightedRandomSampler`` and the
  mosaic partner images with the same weights.

:func:`train_round` does it for one pipeline run: dataset version -> YOLO export -> warm
start (promoted checkpoint, else the base checkpoint, else scratch) -> :func:`train` ->
``models/<dag_id>/<run_id>/``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hitl_plugin.config import PipelineConfig
from hitl_plugin.model.offline import import_ultralytics, resolve_device, resolve_weights
from hitl_plugin.paths import Layout, safe_component
from hitl_plugin.schemas import write_json_atomic

log = logging.getLogger(__name__)

EPOCHS_FILE = "epochs.jsonl"
RESULT_FILE = "train_result.json"
RUN_NAME = "train"
BUILTIN_BASE = Path(__file__).resolve().parent.parent / "assets" / "base_yolov8n.pt"

_METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
}


# -- threads and weights ------------------------------------------------------------------


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads, also after Ultralytics' ``select_device`` (which resets
    them to ``min(8, cpus - 1)``, i.e. one thread on two cores)."""
    import torch
    from ultralytics.utils import torch_utils

    torch.set_num_threads(threads)
    torch_utils.NUM_THREADS = threads


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


def _weight_mosaic_partners(transforms: Any, weights: list[float]) -> int:
    """Make every Mosaic in ``transforms`` pick partner images with ``weights``.

    Ultralytics picks the 3 (or 8) partner images uniformly from its buffer of recently
    loaded images, which dilutes the main sampler's weights. Here partners are drawn from
    the whole dataset in proportion to the weights, like the main image. Returns how many
    Mosaic transforms were changed.
    """
    import itertools
    import types

    from ultralytics.data.augment import Mosaic

    population = range(len(weights))
    cum = list(itertools.accumulate(weights))

    def get_indexes(self):  # noqa: ANN001 - bound to a Mosaic instance
        return random.choices(population, cum_weights=cum, k=self.n - 1)

    changed, seen, stack = 0, set(), [transforms]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Mosaic):
            obj.get_indexes = types.MethodType(get_indexes, obj)
            changed += 1
        stack.extend(getattr(obj, "transforms", None) or [])
        stack.append(getattr(obj, "pre_transform", None))
    return changed


def make_trainer_class(
    image_weights: dict[str, float] | None = None,
    *,
    threads: int | None = None,
    weight_mosaic: bool = True,
    seed: int = 0,
) -> type:
    """A ``DetectionTrainer`` subclass bound to per-image sampling weights.

    ``model.train(trainer=cls)`` takes a class and the class is not stored in the
    checkpoint, so the weights are bound here and the class is passed again on resume.

    :param image_weights: image path (or file stem) -> weight; None or all 1.0 trains as usual.
    :param threads: torch CPU threads to restore after Ultralytics picks its device.
    :param weight_mosaic: also draw mosaic partner images with the weights.
    :param seed: seed of the weighted sampler's generator.
    """
    import torch
    from ultralytics.data.build import InfiniteDataLoader, seed_worker
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import torch_distributed_zero_first

    weighted = bool(image_weights) and any(float(w) != 1.0 for w in image_weights.values())

    class HitlDetectionTrainer(DetectionTrainer):
        hitl_image_weights = dict(image_weights or {})
        hitl_weighted = weighted

        def _setup_train(self):
            if threads and self.device.type == "cpu":
                set_threads(threads)
            return super()._setup_train()

        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            if mode != "train" or not self.hitl_weighted or rank not in (-1, 0):
                return super().get_dataloader(dataset_path, batch_size, rank, mode)
            with torch_distributed_zero_first(rank):
                dataset = self.build_dataset(dataset_path, mode, batch_size)
            weights = sample_weights(list(dataset.im_files), self.hitl_image_weights)
            generator = torch.Generator()
            generator.manual_seed(seed)
            sampler = torch.utils.data.WeightedRandomSampler(
                torch.as_tensor(weights, dtype=torch.double),
                num_samples=len(dataset),
                replacement=True,
                generator=generator,
            )
            if weight_mosaic:
                dataset.hitl_weights = weights
                n = _weight_mosaic_partners(dataset.transforms, weights)
                log.info("weighted sampler over %s images (%s mosaic transforms weighted)",
                         len(weights), n)
            batch = min(batch_size, len(dataset))
            nw = 0 if self.device.type in {"cpu", "mps"} else min(os.cpu_count() or 1,
                                                                  self.args.workers)
            return InfiniteDataLoader(
                dataset=dataset,
                batch_size=batch,
                shuffle=False,
                num_workers=nw,
                sampler=sampler,
                pin_memory=self.device.type == "cuda",
                collate_fn=getattr(dataset, "collate_fn", None),
                worker_init_fn=seed_worker,
                generator=generator,
                drop_last=False,
            )

        def _close_dataloader_mosaic(self):
            super()._close_dataloader_mosaic()
            dataset = self.train_loader.dataset
            if weight_mosaic and getattr(dataset, "hitl_weights", None):
                _weight_mosaic_partners(dataset.transforms, dataset.hitl_weights)

    return HitlDetectionTrainer


# -- checkpoints --------------------------------------------------------------------------


def checkpoint_state(path: Path) -> dict:
    """What a ``last.pt`` says about its training.

    :return: ``{"state": "resumable"|"finished"|"corrupt", "epoch": int, "epochs": int}``;
        ``epoch`` is the last completed epoch (0-based), -1 when stripped.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a kill -9 during the save leaves a truncated file
        log.warning("checkpoint %s cannot be read (%s)", path, exc)
        return {"state": "corrupt", "epoch": -1, "epochs": 0}
    if not isinstance(ckpt, dict):
        return {"state": "corrupt", "epoch": -1, "epochs": 0}
    epoch = int(ckpt.get("epoch", -1) if ckpt.get("epoch") is not None else -1)
    epochs = int((ckpt.get("train_args") or {}).get("epochs") or 0)
    has_optimizer = ckpt.get("optimizer") is not None
    if has_optimizer and 0 <= epoch and epoch + 1 < epochs:
        state = "resumable"
    elif has_optimizer and epoch >= 0:
        state = "unstripped_final"  # killed between the last save and the final strip
    else:
        state = "finished"
    return {"state": state, "epoch": epoch, "epochs": epochs}


def read_epochs(out_dir: Path) -> list[dict]:
    """The per-epoch records, one per epoch (a rerun epoch keeps its latest record)."""
    path = Path(out_dir) / EPOCHS_FILE
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


def _scalar(value: Any) -> float | None:
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


def _epoch_recorder(out_dir: Path, on_epoch: Callable[[dict], None] | None):
    """The ``on_fit_epoch_end`` callback: never raises (an exception aborts training)."""
    path = Path(out_dir) / EPOCHS_FILE

    def on_fit_epoch_end(trainer) -> None:  # noqa: ANN001
        try:
            if trainer.epoch >= trainer.epochs:  # final_eval of best.pt: not an epoch
                return
            losses = {}
            if getattr(trainer, "tloss", None) is not None:
                items = trainer.label_loss_items(trainer.tloss, prefix="train")
                losses = {k.split("/", 1)[1]: _scalar(v) for k, v in items.items()}
            metrics = {name: _scalar((trainer.metrics or {}).get(key))
                       for key, name in _METRIC_KEYS.items()}
            row = {
                "epoch": int(trainer.epoch),
                "epochs": int(trainer.epochs),
                "loss": losses,
                "val_loss": {k.split("/", 1)[1]: _scalar(v)
                             for k, v in (trainer.metrics or {}).items() if k.startswith("val/")},
                **metrics,
                "fitness": _scalar(getattr(trainer, "fitness", None)),
                "checkpoint": str(trainer.last) if Path(trainer.last).exists() else None,
                "epoch_seconds": _scalar(getattr(trainer, "epoch_time", None)),
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            log.info(
                "epoch %s/%s: loss %s, mAP50 %s, mAP50-95 %s (%.1f s)",
                row["epoch"] + 1, row["epochs"], sum(v or 0 for v in losses.values()),
                row["map50"], row["map50_95"], row["epoch_seconds"] or 0.0,
            )
            if on_epoch is not None:
                on_epoch(row)
        except Exception:  # noqa: BLE001 - a failing callback would abort training
            log.exception("epoch callback failed (training goes on)")

    return on_fit_epoch_end


# -- training -----------------------------------------------------------------------------


def _final_metrics(metrics: Any) -> dict:
    if metrics is None:
        return {}
    values = getattr(metrics, "results_dict", None)
    if values is None:
        values = metrics if isinstance(metrics, dict) else {}
    return {name: _scalar(values.get(key)) for key, name in _METRIC_KEYS.items()}


def _result(out_dir: Path, run_dir: Path, epochs: int, resumed: int | None, metrics: dict,
            seconds: float, device: str = "cpu") -> dict:
    weights = run_dir / "weights"
    best = weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"
    rows = read_epochs(out_dir)
    if not metrics and rows:
        metrics = {k: rows[-1].get(k) for k in _METRIC_KEYS.values()}
    return {
        "checkpoint": str(best),
        "last": str(weights / "last.pt"),
        "model_dir": str(out_dir),
        "epochs": epochs,
        "epochs_recorded": len(rows),
        "resumed_from_epoch": resumed,
        "metrics": metrics,
        "seconds": round(seconds, 2),
        "device": device,
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
) -> dict:
    """Train (or resume, or return the finished result of) one training in ``out_dir``.

    :param data_yaml: Ultralytics ``data.yaml``.
    :param out_dir: owns ``train/weights/{last,best}.pt``, ``epochs.jsonl`` and
        ``train_result.json``; the same folder resumes an interrupted training.
    :param architecture: model YAML used when ``weights`` is None (training from scratch).
    :param weights: a local ``.pt`` to warm-start from (never downloaded).
    :param image_weights: image path or stem -> sampling weight.
    :param on_epoch: called with each epoch's record (exceptions are logged, not raised).
    :param threads: torch CPU threads (see :func:`choose_threads`; ``adapt_threads=False``
        uses exactly this many).
    :return: ``{"checkpoint", "last", "model_dir", "epochs", "epochs_recorded",
        "resumed_from_epoch", "metrics", "seconds"}``.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = Path(data_yaml).absolute()
    run_dir = out_dir / RUN_NAME
    last = run_dir / "weights" / "last.pt"
    result_file = out_dir / RESULT_FILE
    ultralytics = import_ultralytics()
    device = resolve_device(device)
    if device == "cpu":
        threads = choose_threads(threads, adapt=adapt_threads)
        set_threads(threads)
    trainer_cls = make_trainer_class(image_weights, threads=threads, seed=seed,
                                     weight_mosaic=weight_mosaic)
    recorder = _epoch_recorder(out_dir, on_epoch)
    started = time.time()

    resumed_from: int | None = None
    if last.exists():
        state = checkpoint_state(last)
        if state["state"] == "finished" and result_file.is_file():
            done = json.loads(result_file.read_text(encoding="utf-8"))
            log.info("training in %s already finished; returning its result", out_dir)
            return done
        if state["state"] in ("finished", "unstripped_final"):
            log.info("training in %s finished (epoch %s of %s); finalizing", out_dir,
                     state["epoch"] + 1, state["epochs"])
            from ultralytics.utils.torch_utils import strip_optimizer

            for f in (last, run_dir / "weights" / "best.pt"):
                if f.exists() and checkpoint_state(f)["state"] != "finished":
                    strip_optimizer(f)
            result = _result(out_dir, run_dir, state["epochs"] or epochs, None, {}, 0.0, device)
            write_json_atomic(result_file, result)
            return result
        if state["state"] == "resumable":
            resumed_from = state["epoch"] + 1
            log.info("resuming training in %s at epoch %s of %s", out_dir, resumed_from + 1,
                     state["epochs"])
            model = ultralytics.YOLO(str(last))
            model.add_callback("on_fit_epoch_end", recorder)
            metrics = model.train(
                resume=True, trainer=trainer_cls, data=str(data_yaml), device=device,
                workers=0 if device == "cpu" else 2, plots=plots,
            )
            result = _result(out_dir, run_dir, state["epochs"], resumed_from,
                             _final_metrics(metrics), time.time() - started, device)
            write_json_atomic(result_file, result)
            return result
        log.warning("discarding the unreadable training in %s and starting again", run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    (out_dir / EPOCHS_FILE).unlink(missing_ok=True)  # records of a training that left no checkpoint

    if weights is not None:
        model = ultralytics.YOLO(str(resolve_weights(weights)))
    else:
        model = ultralytics.YOLO(_architecture_path(architecture))
    model.add_callback("on_fit_epoch_end", recorder)
    log.info("training %s on %s: %s epochs at %s px, batch %s, device %s", weights or architecture,
             data_yaml, epochs, imgsz, batch, device)
    args = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
        workers=0 if device == "cpu" else 2, seed=seed, plots=plots, amp=False,
        project=str(out_dir), name=RUN_NAME, exist_ok=True, verbose=False, val=True,
        pretrained=weights is not None,
    )
    args.update(extra_args or {})
    metrics = model.train(trainer=trainer_cls, **args)
    result = _result(out_dir, run_dir, epochs, None, _final_metrics(metrics),
                     time.time() - started, device)
    write_json_atomic(result_file, result)
    return result


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


# -- one pipeline round -------------------------------------------------------------------


def warm_start(config: PipelineConfig, root: Path, dag_id: str) -> tuple[str | None, str]:
    """The checkpoint a round starts from, and where it came from.

    In order: the pipeline's promoted checkpoint, ``model.base_checkpoint`` (``builtin``:
    the packaged asset), else None (scratch from ``model.architecture``).
    """
    from hitl_plugin.model.gate import promoted

    current = promoted(root, dag_id)
    if current and Path(current["checkpoint"]).is_file():
        return current["checkpoint"], "promoted"
    base = config.model.base_checkpoint
    if base is None or base == "":
        return None, "scratch"
    if base == "builtin":
        if not BUILTIN_BASE.is_file():
            raise FileNotFoundError(f"the packaged base checkpoint {BUILTIN_BASE} is missing")
        return str(BUILTIN_BASE), "builtin"
    path = config.resolve(base)
    return str(resolve_weights(path)), "path"


def train_round(
    config: PipelineConfig,
    *,
    root: Path,
    dag_id: str,
    run_id: str,
    version: str | None = None,
    epochs: int | None = None,
    imgsz: int | None = None,
    name: str | None = None,
) -> dict:
    """Train this run's model on a dataset version; resumable (the folder is the run's).

    :param name: a sub-folder of the run's model folder, for a second training in the same
        run (e.g. ``retrain`` after the merge); None trains in the run's folder itself.
    :return: :func:`train`'s result plus ``"version"``, ``"weights_source"``,
        ``"weighted_images"`` and ``"data_yaml"``.
    """
    from hitl_plugin.dataset.export import export_yolo
    from hitl_plugin.dataset.store import DatasetStore

    layout = Layout.at(root)
    store = DatasetStore(root, config.dataset.name)
    version = version or store.require_latest()
    coco = store.load(version)
    val = json.loads(layout.val_file(config.dataset.name).read_text(encoding="utf-8"))
    data_yaml = export_yolo(root, config.dataset.name, version, coco, val)
    rows = json.loads((data_yaml.parent / "weights.json").read_text(encoding="utf-8"))
    image_weights = {row["path"]: float(row["weight"]) for row in rows}
    out_dir = layout.model_dir(dag_id, run_id)
    if name:
        out_dir = out_dir / safe_component(name)
    source_file = out_dir / "warm_start.json"
    if source_file.is_file():  # a retry must start from the same weights as the first try
        chosen = json.loads(source_file.read_text(encoding="utf-8"))
        weights, source = chosen["weights"], chosen["source"]
    else:
        weights, source = warm_start(config, root, dag_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(source_file, {"weights": weights, "source": source})
    t = config.training
    result = train(
        data_yaml, out_dir,
        architecture=config.model.architecture, weights=weights,
        epochs=int(epochs or t.epochs), imgsz=int(imgsz or t.imgsz), batch=t.batch,
        device=t.device, threads=t.threads, seed=t.seed, plots=t.plots,
        image_weights=image_weights,
    )
    weighted = sum(1 for w in image_weights.values() if w != 1.0)
    return {**result, "version": version, "weights_source": source,
            "weighted_images": weighted, "data_yaml": str(data_yaml)}


def train_and_evaluate(
    config: PipelineConfig,
    *,
    root: Path,
    dag_id: str,
    run_id: str,
    version: str | None = None,
    epochs: int | None = None,
    imgsz: int | None = None,
    name: str | None = None,
) -> dict:
    """:func:`train_round`, then COCO mAP of its checkpoint on the clean held-out set.

    ``metrics.json`` goes into the training's folder; a retry that finds it for the same
    checkpoint does not evaluate again.

    :return: :func:`train_round`'s result with ``"metrics"`` = the held-out COCO metrics
        (``map50_95``, ``map50``, ``per_class``, ``n_images``, ``n_predictions``,
        ``checkpoint``) and ``"train_metrics"`` = Ultralytics' own validation metrics.
    """
    from hitl_plugin.model.evaluate import METRICS_FILE, evaluate

    result = train_round(config, root=root, dag_id=dag_id, run_id=run_id, version=version,
                         epochs=epochs, imgsz=imgsz, name=name)
    model_dir = Path(result["model_dir"])
    metrics_file = model_dir / METRICS_FILE
    metrics = None
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if metrics.get("checkpoint") != str(Path(result["checkpoint"]).absolute()):
            metrics = None
    if metrics is None:
        metrics = evaluate(
            Path(result["checkpoint"]), Path(result["data_yaml"]),
            Layout.at(root).val_file(config.dataset.name), model_dir / "eval",
            imgsz=int(imgsz or config.training.imgsz), device=config.training.device,
            metrics_path=metrics_file,
        )
    return {**result, "train_metrics": result["metrics"], "metrics": metrics}
