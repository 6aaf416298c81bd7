"""The one adapter between this package and Ultralytics: every use of its private API is here.

Ultralytics is pinned to one exact version (``pyproject.toml``) because this module reaches
past its public API in five places, each marked ``# PRIVATE:`` with the reason, and each name
listed in :data:`PRIVATE_API` so that a test fails as soon as an upgrade renames one:

1. **Offline flags** (:func:`ensure_offline`). Ultralytics otherwise probes DNS at import,
   checks PyPI for a newer version at every train, downloads ``Arial.ttf`` at every train/val
   (neither ``YOLO_OFFLINE`` nor ``plots=False`` stops that: only a local copy of the font
   does), sends telemetry at the end of each call, runs ``pip install faster-coco-eval`` from
   ``val(save_json=True)`` and downloads weights for ``YOLO('<name>.pt')`` when the file is
   missing and for the AMP check on a GPU. ``YOLO_OFFLINE=true`` makes ``is_online()`` return
   False without a DNS probe; ``YOLO_AUTOINSTALL=false`` stops pip; a private
   ``YOLO_CONFIG_DIR`` holds ``settings.json`` (sync, integrations and hints off) and the two
   fonts (matplotlib's bundled DejaVuSans under both names); when Ultralytics was imported
   before, its module flags are patched too. :func:`resolve_weights` refuses a ``.pt`` that
   does not exist instead of letting Ultralytics download it; Ultralytics' AMP check (which
   downloads ``yolo26n.pt`` on a GPU) is replaced by :func:`offline_amp_check` while the
   trainer sets up.
2. **Torch threads** (:func:`set_threads`): Ultralytics resets them when it picks a device.
3. **The trainer** (:func:`make_trainer_class`): a ``DetectionTrainer`` subclass whose
   dataloader samples images with per-image weights, with the mosaic partner images drawn by
   the same weights (:func:`weight_mosaic_partners`), plus the per-epoch record read off the
   trainer (:func:`epoch_callback`) and the checkpoint's own format (:func:`checkpoint_state`).
4. **The predictor** (:func:`class_prob_predictor`): keeps the full vector of per-class
   scores of every box that survives NMS (``Results.boxes.conf`` holds only the top one),
   and on request the backbone's pooled output per image (:func:`backbone_output`, for the
   drift step), from the same forward pass.
5. **The validator** (:func:`predictions_only_validator`): writes ``predictions.json`` and
   skips Ultralytics' own COCO evaluation (which would ``pip install`` faster-coco-eval).

Nothing here is imported at module level: Ultralytics and torch load when a function runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Every private Ultralytics name this module uses: (module, attribute path). A test resolves
#: each against the installed version.
PRIVATE_API: tuple[tuple[str, str], ...] = (
    ("ultralytics.utils", "ONLINE"),
    ("ultralytics.utils", "SETTINGS"),
    ("ultralytics.utils.checks", "AUTOINSTALL"),
    ("ultralytics.utils.events", "events"),
    ("ultralytics.utils.torch_utils", "NUM_THREADS"),
    ("ultralytics.utils.torch_utils", "torch_distributed_zero_first"),
    ("ultralytics.utils.torch_utils", "strip_optimizer"),
    ("ultralytics.data.augment", "Mosaic.get_indexes"),
    ("ultralytics.data.build", "InfiniteDataLoader"),
    ("ultralytics.data.build", "seed_worker"),
    ("ultralytics.models.yolo.detect", "DetectionTrainer._setup_train"),
    ("ultralytics.models.yolo.detect", "DetectionTrainer.get_dataloader"),
    ("ultralytics.models.yolo.detect", "DetectionTrainer.build_dataset"),
    ("ultralytics.models.yolo.detect", "DetectionTrainer._close_dataloader_mosaic"),
    ("ultralytics.models.yolo.detect", "DetectionTrainer.label_loss_items"),
    ("ultralytics.models.yolo.detect", "DetectionPredictor.postprocess"),
    ("ultralytics.models.yolo.detect", "DetectionPredictor.setup_model"),
    ("ultralytics.models.yolo.detect", "DetectionPredictor.construct_results"),
    ("ultralytics.utils.nms", "non_max_suppression"),
    ("ultralytics.utils.ops", "convert_torch2numpy_batch"),
    ("ultralytics.models.yolo.detect", "DetectionValidator.eval_json"),
    ("ultralytics.engine.trainer", "check_amp"),
    ("ultralytics.nn.autobackend", "AutoBackend.__getattr__"),
)

#: Ultralytics' metric names -> ours.
METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
}


#: Settings that would otherwise sync, log to third-party services or print hints.
OFFLINE_SETTINGS: dict[str, Any] = {
    "sync": False,
    "api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")

_done_for: str | None = None


def default_config_dir() -> Path:
    """``$HITL_HOME/ultralytics`` when HITL_HOME is set, else a per-user temporary folder."""
    home = os.environ.get("HITL_HOME")
    if home:
        return Path(home).absolute() / "ultralytics"
    return Path(tempfile.gettempdir()) / f"hitl-ultralytics-{os.getuid()}"


def _bundled_font() -> Path:
    """matplotlib's DejaVuSans.ttf (matplotlib is a dependency; the file ships in its wheel)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed: no local font for Ultralytics")
    base = Path(next(iter(spec.submodule_search_locations)))
    font = base / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise RuntimeError(f"{font} is missing: no local font for Ultralytics")
    return font


def _place_fonts(config_dir: Path) -> None:
    font = None
    # Ultralytics' USER_CONFIG_DIR is $YOLO_CONFIG_DIR/Ultralytics (it appends the name).
    for folder in (config_dir / "Ultralytics", config_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for name in FONT_NAMES:
            target = folder / name
            if target.is_file() and target.stat().st_size > 0:
                continue
            font = font or _bundled_font()
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(font, tmp)
            os.replace(tmp, target)  # atomic: another process may be reading it


def ensure_offline(config_dir: Path | None = None, *, verbose: bool | None = None) -> Path:
    """Make this process's Ultralytics offline; idempotent, cheap after the first call.

    Sets the environment before Ultralytics is imported; when it already is imported (by
    someone who did not call this first), patches its module-level flags as well.

    :param config_dir: the Ultralytics config folder to own. Default: an existing
        ``YOLO_CONFIG_DIR``, else :func:`default_config_dir`.
    :param verbose: ``YOLO_VERBOSE``; None keeps the environment's value (default quiet).
    :return: the config folder.
    """
    global _done_for
    if config_dir is None:
        config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or default_config_dir())
    config_dir = Path(config_dir).absolute()
    if verbose is not None:
        os.environ["YOLO_VERBOSE"] = "true" if verbose else "false"
    else:
        os.environ.setdefault("YOLO_VERBOSE", "false")
    if _done_for == str(config_dir) and "ultralytics" in sys.modules:
        return config_dir
    os.environ["YOLO_OFFLINE"] = "true"  # Ultralytics compares against "true"/"1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    _place_fonts(config_dir)
    if "ultralytics" in sys.modules:
        _patch_loaded()
    _done_for = str(config_dir)
    return config_dir


def _patch_loaded() -> None:
    """Turn off online paths of an Ultralytics that is already imported."""
    from ultralytics import utils
    from ultralytics.utils import checks

    # PRIVATE: module-level flags read at call time; set when Ultralytics was imported before
    # the environment said offline.
    for module in (utils, checks):
        if getattr(module, "ONLINE", False):
            module.ONLINE = False
        if getattr(module, "AUTOINSTALL", False):
            module.AUTOINSTALL = False
    try:
        current = {k: utils.SETTINGS.get(k) for k in OFFLINE_SETTINGS}
        wanted = {k: v for k, v in OFFLINE_SETTINGS.items() if k in utils.SETTINGS.defaults}
        if any(current.get(k) != v for k, v in wanted.items()):
            utils.SETTINGS.update(wanted)
    except Exception as exc:  # a read-only settings file must not stop training
        log.warning("could not update Ultralytics settings: %s", exc)
    try:  # PRIVATE: the telemetry sender, which is on unless settings say otherwise
        from ultralytics.utils import events

        if getattr(events, "events", None) is not None:
            events.events.enabled = False
    except Exception:  # pragma: no cover - module layout of other versions
        pass


def import_ultralytics():
    """Return the ``ultralytics`` module, imported with the offline settings in force."""
    ensure_offline()
    import ultralytics

    _patch_loaded()
    return ultralytics


def resolve_weights(weights: str | os.PathLike[str]) -> Path:
    """Return an existing checkpoint path, or raise FileNotFoundError.

    ``YOLO('yolov8n.pt')`` with a missing file downloads it; we never let it.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(weights)!r} does not exist (Ultralytics would try to download it; "
            "give a local .pt path, 'builtin', or a model YAML to train from scratch)"
        )
    return path.absolute()


def load_offline_yolo(weights: str | os.PathLike[str], **kwargs: Any):
    """``ultralytics.YOLO`` on a local checkpoint or a model YAML, never downloading."""
    ultralytics = import_ultralytics()
    text = str(weights)
    if text.endswith((".yaml", ".yml")):
        return ultralytics.YOLO(text, **kwargs)
    return ultralytics.YOLO(str(resolve_weights(weights)), **kwargs)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``0`` (the first CUDA GPU) when one is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def machine_cpus() -> int:
    """The CPUs this process may run on (a container's or a cgroup's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loader_workers(device: str, workers: int | None = None) -> int:
    """Dataloader worker processes: none on the CPU (the loader shares the training's cores;
    Ultralytics forces 0 there too), else ``workers`` or the machine's CPUs less one (the
    training process keeps one), at most 8 (Ultralytics' default)."""
    if device in ("cpu", "mps"):
        return 0
    if workers is not None:
        return workers
    return max(1, min(8, machine_cpus() - 1))


def offline_amp_check(model: Any) -> bool:
    """Mixed precision works on the model's device: the stand-in for Ultralytics'
    ``check_amp``, which downloads ``yolo26n.pt`` to compare its detections on a bus photo.

    This one runs the model being trained on a small random batch in FP32 and under autocast
    and asks for finite outputs close to the FP32 ones (mean absolute difference under 5 %
    of the mean magnitude). Off the GPU it answers False, as Ultralytics' does.
    """
    import copy

    import torch
    from ultralytics.utils.torch_utils import autocast

    device = next(model.parameters()).device
    if device_type(device) != "cuda":
        return False
    name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
    probe = copy.deepcopy(model).eval()
    im = torch.rand(2, 3, 64, 64, device=device)
    with torch.no_grad():
        a = _first_tensor(probe(im)).float()
        with autocast(enabled=True, device=device_type(device)):
            b = _first_tensor(probe(im)).float()
    del probe
    ok = bool(a.shape == b.shape and torch.isfinite(b).all()
              and (a - b).abs().mean() <= 0.05 * a.abs().mean().clamp_min(1e-6))
    log.info("AMP check on %s (offline, no download): %s", name,
             "passed, training in mixed precision" if ok else
             "FAILED (outputs not finite or far from FP32): training in FP32")
    return ok


def device_type(device: Any) -> str:
    """``cuda``, ``cpu``, ... of a torch device (a seam the CUDA-faking test patches)."""
    return device.type


def _first_tensor(out: Any):
    """The first tensor of a model's output (a tensor, or a tuple/list holding them)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def checkpoint_names(path: str | os.PathLike[str]) -> list[str]:
    """The class names a ``.pt`` detects, in class-index order."""
    import torch

    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    names = getattr(model, "names", None)
    if names is None:
        raise ValueError(f"{path}: not an Ultralytics detection checkpoint (no class names)")
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    return [str(n) for n in names]


# -- threads, trainer, checkpoints ----------------------------------------------------


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads, also after Ultralytics' ``select_device`` (which resets
    them to ``min(8, cpus - 1)``, i.e. one thread on two cores)."""
    import torch
    from ultralytics.utils import torch_utils

    torch.set_num_threads(threads)
    # PRIVATE: select_device() sets torch's threads from this module constant.
    torch_utils.NUM_THREADS = threads


def weight_mosaic_partners(transforms: Any, weights: list[float]) -> int:
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
            # PRIVATE: Mosaic draws partners in get_indexes(); no option weights them.
            obj.get_indexes = types.MethodType(get_indexes, obj)
            changed += 1
        stack.extend(getattr(obj, "transforms", None) or [])
        stack.append(getattr(obj, "pre_transform", None))
    return changed


def make_trainer_class(
    weights_of: Callable[[list[str]], list[float]] | None = None,
    *,
    threads: int | None = None,
    weight_mosaic: bool = True,
    seed: int = 0,
) -> type:
    """A ``DetectionTrainer`` subclass bound to per-image sampling weights.

    ``model.train(trainer=cls)`` takes a class and the class is not stored in the
    checkpoint, so the weights are bound here and the class is passed again on resume.

    :param weights_of: the sampling weight of each image file the dataset lists (in its
        order); None trains as usual (uniform sampling).
    :param threads: torch CPU threads to restore after Ultralytics picks its device.
    :param weight_mosaic: also draw mosaic partner images with the weights.
    :param seed: seed of the weighted sampler's generator.
    """
    import torch
    from ultralytics.data.build import InfiniteDataLoader, seed_worker
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import torch_distributed_zero_first

    class HitlDetectionTrainer(DetectionTrainer):
        hitl_weighted = weights_of is not None

        # PRIVATE: the one hook that runs after select_device() and before the first epoch.
        def _setup_train(self):
            from ultralytics.engine import trainer as engine

            if threads and self.device.type == "cpu":
                set_threads(threads)
            # PRIVATE: the trainer calls check_amp() by the name it imported; on a GPU that
            # one downloads weights. Ours runs offline, for this setup only.
            original, engine.check_amp = engine.check_amp, offline_amp_check
            try:
                return super()._setup_train()
            finally:
                engine.check_amp = original

        # PRIVATE: overridden to put a WeightedRandomSampler into Ultralytics' own loader
        # (build_dataset, InfiniteDataLoader, seed_worker, torch_distributed_zero_first).
        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            if mode != "train" or not self.hitl_weighted or rank not in (-1, 0):
                return super().get_dataloader(dataset_path, batch_size, rank, mode)
            with torch_distributed_zero_first(rank):
                dataset = self.build_dataset(dataset_path, mode, batch_size)
            weights = weights_of(list(dataset.im_files))
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
                n = weight_mosaic_partners(dataset.transforms, weights)
                log.info("weighted sampler over %s images (%s mosaic transforms weighted)",
                         len(weights), n)
            batch = min(batch_size, len(dataset))
            nw = 0 if self.device.type in {"cpu", "mps"} else min(machine_cpus(),
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

        # PRIVATE: closing mosaic for the last epochs rebuilds the transforms; weight again.
        def _close_dataloader_mosaic(self):
            super()._close_dataloader_mosaic()
            dataset = self.train_loader.dataset
            if weight_mosaic and getattr(dataset, "hitl_weights", None):
                weight_mosaic_partners(dataset.transforms, dataset.hitl_weights)

    return HitlDetectionTrainer


def scalar(value: Any) -> float | None:
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


def epoch_callback(path: Path, on_epoch: Callable[[dict], None] | None = None):
    """The ``on_fit_epoch_end`` callback: one JSON line per epoch in ``path``.

    It never raises (an exception in a callback aborts training).
    """
    path = Path(path)

    def on_fit_epoch_end(trainer) -> None:  # noqa: ANN001
        # PRIVATE: the trainer's attributes (epoch, tloss, metrics, fitness, last, epoch_time).
        try:
            if trainer.epoch >= trainer.epochs:  # final_eval of best.pt: not an epoch
                return
            losses = {}
            if getattr(trainer, "tloss", None) is not None:
                items = trainer.label_loss_items(trainer.tloss, prefix="train")
                losses = {k.split("/", 1)[1]: scalar(v) for k, v in items.items()}
            # Ultralytics validates every epoch with val=True, else only the last one; the
            # metrics of an epoch it did not validate are stale zeros, not a result.
            validated = bool(getattr(trainer.args, "val", True)) or (
                trainer.epoch + 1 >= trainer.epochs)
            metrics = {name: scalar((trainer.metrics or {}).get(key)) if validated else None
                       for key, name in METRIC_KEYS.items()}
            row = {
                "epoch": int(trainer.epoch),
                "epochs": int(trainer.epochs),
                "loss": losses,
                "val_loss": {k.split("/", 1)[1]: scalar(v)
                             for k, v in (trainer.metrics or {}).items() if k.startswith("val/")},
                **metrics,
                "fitness": scalar(getattr(trainer, "fitness", None)),
                "checkpoint": str(trainer.last) if Path(trainer.last).exists() else None,
                "epoch_seconds": scalar(getattr(trainer, "epoch_time", None)),
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if validated:
                log.info("epoch %s/%s: loss %.4f, mAP50 %s, mAP50-95 %s (%.1f s)",
                         row["epoch"] + 1, row["epochs"], sum(v or 0 for v in losses.values()),
                         row["map50"], row["map50_95"], row["epoch_seconds"] or 0.0)
            else:
                log.info("epoch %s/%s: loss %.4f, not validated (%.1f s)", row["epoch"] + 1,
                         row["epochs"], sum(v or 0 for v in losses.values()),
                         row["epoch_seconds"] or 0.0)
            if on_epoch is not None:
                on_epoch(row)
        except Exception:  # noqa: BLE001 - a failing callback would abort training
            log.exception("epoch callback failed (training goes on)")

    return on_fit_epoch_end


def final_metrics(metrics: Any) -> dict:
    """Our names for the metrics ``model.train()`` returns."""
    if metrics is None:
        return {}
    values = getattr(metrics, "results_dict", None)
    if values is None:
        values = metrics if isinstance(metrics, dict) else {}
    return {name: scalar(values.get(key)) for key, name in METRIC_KEYS.items()}


def checkpoint_state(path: Path) -> dict:
    """What a ``last.pt`` says about its training.

    :return: ``{"state": "resumable"|"finished"|"corrupt", "epoch": int, "epochs": int}``;
        ``epoch`` is the last completed epoch (0-based), -1 when stripped.
    """
    import torch

    # PRIVATE: the checkpoint's own dict layout (epoch, optimizer, train_args).
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


def strip_optimizer(path: Path, out: Path | None = None, updates: dict | None = None) -> None:
    """Drop the optimizer state from a finished checkpoint (what Ultralytics does at the end).

    :param out: write the stripped checkpoint there instead of over ``path``.
    :param updates: more keys to store in the checkpoint.
    """
    from ultralytics.utils.torch_utils import strip_optimizer as strip

    strip(str(path), str(out) if out is not None else "", updates=updates)


# -- prediction and validation ---------------------------------------------------------


def backbone_output(model: Any):
    """The last layer of a detection model's backbone (YOLOv8: ``SPPF``), whose output the
    drift step pools into an image embedding.

    :param model: a predictor's ``AutoBackend`` or a ``DetectionModel``.
    """
    # PRIVATE: AutoBackend forwards attributes to its backend, whose ``model`` is the
    # DetectionModel of a ``.pt``; its ``yaml`` lists the backbone's layers first.
    det = getattr(model, "model", model) if not hasattr(model, "yaml") else model
    layers, spec = getattr(det, "model", None), getattr(det, "yaml", None)
    if layers is None or not isinstance(spec, dict) or not spec.get("backbone"):
        raise TypeError(f"{type(model).__name__}: not an Ultralytics detection model with a "
                        "backbone (only .pt checkpoints give embeddings)")
    return layers[len(spec["backbone"]) - 1]


def class_prob_predictor(embeddings: bool = False) -> type:
    """A ``DetectionPredictor`` that attaches per-class sigmoid scores as ``r.class_probs``.

    :param embeddings: also attach ``r.embedding``, the backbone's output for the image
        averaged over its spatial positions (a float32 vector; 256 numbers for YOLOv8n),
        taken by a forward hook during the same inference: no second pass.
    """
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms

    class ClassProbPredictor(DetectionPredictor):
        hitl_features = None

        # PRIVATE: on the CPU, AutoBackend.warmup() runs no forward pass; all it does is
        # import torchvision (1.5 s here, with torch._dynamo) so that NMS uses torchvision's
        # kernel. Marking the warm-up done leaves NMS to Ultralytics' own TorchNMS, which
        # matches torchvision's exactly (scores.jsonl byte-identical, measured).
        def setup_model(self, model, verbose: bool = True):
            super().setup_model(model, verbose)
            if self.device.type == "cpu":
                self.done_warmup = True
            if embeddings:
                def keep(_module, _inputs, output) -> None:  # noqa: ANN001 - torch's hook
                    self.hitl_features = output.detach().float().mean(dim=(2, 3)).cpu().numpy()

                backbone_output(self.model).register_forward_hook(keep)

        # PRIVATE: postprocess() runs NMS; the kept indices (return_idxs) select the raw
        # per-class scores of each box, which Results does not carry.
        def postprocess(self, preds, img, orig_imgs, **kwargs):
            raw = preds[0] if isinstance(preds, (list, tuple)) else preds
            nc = len(self.model.names)
            out, keep = nms.non_max_suppression(
                raw, self.args.conf, self.args.iou, self.args.classes, self.args.agnostic_nms,
                max_det=self.args.max_det, nc=0, return_idxs=True)
            if not isinstance(orig_imgs, list):
                from ultralytics.utils import ops

                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            results = self.construct_results(out, img, orig_imgs)
            features = self.hitl_features
            if embeddings and (features is None or len(features) != len(results)):
                raise RuntimeError("the backbone hook saw no output for this batch")
            for b, (r, idx) in enumerate(zip(results, keep)):
                r.class_probs = raw[b, 4:4 + nc, idx.long()].T.float().cpu().numpy()
                if embeddings:
                    r.embedding = features[b]
            self.hitl_features = None
            return results

    return ClassProbPredictor


def predictions_only_validator() -> type:
    """A ``DetectionValidator`` that writes ``predictions.json`` and evaluates nothing."""
    from ultralytics.models.yolo.detect import DetectionValidator

    class PredictionsOnlyValidator(DetectionValidator):
        """Write ``predictions.json`` and stop: no faster-coco-eval, no pip."""

        # PRIVATE: eval_json() is where Ultralytics installs and runs faster-coco-eval.
        def eval_json(self, stats):
            return stats

    return PredictionsOnlyValidator
