"""``hitl base-checkpoint``: train the small base checkpoint shipped with the package.

Runs warm-start from it the way users warm-start from pretrained weights, without any
download. The recipe: synthetic shapes from :func:`hitl_dev.synth.generate` with seeds
that no benchmark or demo uses (``--seed``, default 1000, and 1000 + 1 for the held-out
set), no label noise, YOLOv8n from its YAML, then the optimizer stripped (``strip_optimizer``)
so the file stays well under 10 MB. A JSON sidecar (``<out>.json``) records the recipe,
seeds, timings and the validation mAP.

:func:`tiny_export` makes a very small exported dataset with the same generator; tests use
it where training time matters more than realism.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hitl_plugin.schemas import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_SEED = 1000  # benchmarks and the demo use small seeds (0-99); keep clear of them


def tiny_export(work: str | Path, *, train: int = 12, val: int = 6, imgsz: int = 64,
                classes: int = 2, seed: int = 0, name: str = "tiny", pool: int = 0,
                noise: float = 0.0) -> tuple[Path, Path, Path]:
    """A tiny :func:`hitl_dev.synth.generate` dataset (clean unless ``noise``), imported into
    a dataset store under ``work/store`` as ``v0001`` and exported.

    :return: ``(data_yaml, val_coco_file, storage_root)``.
    """
    from hitl_dev.synth import generate
    from hitl_plugin.dataset.export import export_yolo
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.paths import Layout

    work = Path(work)
    root = work / "store"
    store = DatasetStore(root, name)
    version = store.latest()
    if version is None:
        src = work / "src"
        generate(src, train=train, val=val, pool=pool, classes=classes, imgsz=imgsz,
                 noise=noise, seed=seed)
        version = store.import_source(src)
    val_file = Layout.at(root).val_file(name)
    data = export_yolo(root, name, version, store.load(version),
                       json.loads(val_file.read_text(encoding="utf-8")))
    return data, val_file, root


def build(out: Path, *, train: int = 400, val: int = 100, classes: int = 4, imgsz: int = 160,
          data_imgsz: int = 128, epochs: int = 50, batch: int = 16, seed: int = DEFAULT_SEED,
          threads: int = 2, device: str = "auto", workdir: Path | None = None) -> dict:
    """Generate the data, train YOLOv8n from its YAML, strip and write ``out`` + sidecar."""
    from hitl_dev.synth import generate
    from hitl_plugin.dataset.store import DatasetStore
    from hitl_plugin.model import yolo
    from hitl_plugin.model.evaluate import evaluate
    from hitl_plugin.model.train import train as run_train
    from hitl_plugin.paths import ModelPaths

    out = Path(out).absolute()
    own_tmp = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="hitl-base-")).absolute()
    started = time.time()
    try:
        source = work / "source"
        if not (source / "annotations" / "val.json").is_file():
            generate(source, train=train, val=val, pool=0, classes=classes, imgsz=data_imgsz,
                     noise=0.0, seed=seed)
        root = work / "store"
        store = DatasetStore(root, "base")
        version = store.latest() or store.import_source(source)
        from hitl_plugin.dataset.export import export_yolo
        from hitl_plugin.paths import Layout

        coco = store.load(version)
        val_file = Layout.at(root).val_file("base")
        val_coco = json.loads(val_file.read_text())
        data_yaml = export_yolo(root, "base", version, coco, val_coco)
        result = run_train(data_yaml, work / "model", architecture="yolov8n.yaml", weights=None,
                           epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                           threads=threads, seed=seed)
        best = Path(result["checkpoint"])
        metrics = evaluate(best, data_yaml, val_file, ModelPaths(work / "eval"), imgsz=imgsz,
                           device=device)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        yolo.strip_optimizer(best, tmp, updates={"hitl_base": {"seed": seed, "epochs": epochs}})
        tmp.replace(out)
        size = out.stat().st_size
        sidecar = {
            "checkpoint": out.name,
            "bytes": size,
            "recipe": {"architecture": "yolov8n.yaml", "data": "hitl_dev.synth.generate",
                       "train": train, "val": val, "classes": classes, "imgsz": imgsz,
                       "data_imgsz": data_imgsz,
                       "noise": 0.0, "epochs": epochs, "batch": batch, "data_seed": seed,
                       "train_seed": seed, "threads": threads,
                       "device": result.get("device", device)},
            "classes": [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])],
            "val_metrics": {k: metrics[k] for k in ("map50_95", "map50", "per_class",
                                                   "n_images", "n_predictions")},
            "train_seconds": result["seconds"],
            "total_seconds": round(time.time() - started, 1),
            "machine": {"python": platform.python_version(), "processor": platform.machine()},
            "command": f"hitl base-checkpoint --out {out.name} --epochs {epochs} "
                       f"--imgsz {imgsz} --data-imgsz {data_imgsz} --seed {seed} --train {train} "
                       f"--val {val}",
        }
        write_json_atomic(out.with_suffix(".json"), sidecar)
        for path in (out, out.with_suffix(".json")):
            os.chmod(path, 0o644)  # shipped in the package: readable by everyone
        if size >= 10 * 1024 * 1024:
            raise RuntimeError(f"{out} is {size} bytes, over the 10 MB budget")
        return sidecar
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None, prog: str = "hitl base-checkpoint") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="Checkpoint file to write.")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--data-imgsz", type=int, default=128,
                        help="Size of the synthetic images (the demo's are 128 px).")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=400, help="Synthetic training images.")
    parser.add_argument("--val", type=int, default=100, help="Synthetic held-out images.")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep data and the full training here (default: a temp folder).")
    args = parser.parse_args(argv)
    sidecar = build(args.out, train=args.train, val=args.val, classes=args.classes,
                    imgsz=args.imgsz, data_imgsz=args.data_imgsz, epochs=args.epochs,
                    batch=args.batch, seed=args.seed,
                    threads=args.threads, device=args.device, workdir=args.workdir)
    json.dump(sidecar, sys.stdout, indent=2)
    print()
    return 0
