"""Export a dataset version to the layout Ultralytics trains on.

Images stay where they are stored once (``images/<name>/...``). The export folder holds
``images/<image id>.<ext>`` symlinks to them (Ultralytics finds a label file by replacing
``/images/`` with ``/labels/`` in the image path, so each version needs its own parallel
tree), ``labels/<image id>.txt`` in YOLO format, ``train.txt``/``val.txt`` image lists and
``data.yaml``. Crowd annotations (``iscrowd: 1``, a region of many objects) are not boxes to
learn and are left out of the labels, as Ultralytics' own COCO converter does; they stay in
the dataset. Naming files by COCO image id lets Ultralytics' ``predictions.json`` (which
uses the file stem as ``image_id``) be evaluated against our COCO files directly.

The box conversion is the one in ``ultralytics.data.converter.convert_coco`` (top-left
``xywh`` in pixels to normalized centre ``xywh``, clipped to the image); that function itself
insists on its own folder layout and file names, so the few lines are repeated here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from hitl_plugin.dataset.coco import annotations_by_image, class_names
from hitl_plugin.paths import ExportPaths, Layout
from hitl_plugin.schemas import write_json_atomic

#: Recorded in ``.complete.json``: an export without it (written before crowd annotations
#: were left out of the labels) is written again.
LABELS_RULE = "no-crowd"


def yolo_line(bbox: list[float], width: float, height: float, cls: int) -> str | None:
    """One YOLO label line for a COCO box, or None when nothing is left after clipping."""
    x, y, w, h = bbox
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def _write_split(
    layout: Layout, coco: dict, out: Path, list_name: str, class_index: dict[int, int]
) -> list[dict]:
    images_dir, labels_dir = out / "images", out / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    grouped = annotations_by_image(coco)
    rows, listed = [], []
    for img in coco["images"]:
        src = layout.image_path(img["file_name"])
        ext = src.suffix.lower() or ".png"
        link = images_dir / f"{img['id']}{ext}"
        if not link.is_symlink():
            os.symlink(src, link)
        lines = [
            line
            for ann in grouped.get(img["id"], [])
            if not ann.get("iscrowd")
            and (line := yolo_line(ann["bbox"], img["width"], img["height"],
                                  class_index[ann["category_id"]]))
        ]
        (labels_dir / f"{img['id']}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        listed.append(str(link))
        rows.append({"id": img["id"], "path": str(link), "weight": float(img.get("weight", 1.0))})
    (out / list_name).write_text("\n".join(listed) + "\n")
    return rows


def export_yolo(
    root: str | os.PathLike[str],
    name: str,
    version: str,
    coco: dict,
    val: dict,
    *,
    out: Path | None = None,
) -> Path:
    """Write (or reuse) the YOLO layout of a version; return the path of its ``data.yaml``.

    Only images of the ``train`` split are exported for training; pool images have no
    labels yet. ``weights.json`` (:attr:`ExportPaths.weights`, read by :func:`read_weights`)
    lists each training image's path and sampling weight, in the order of ``train.txt``.

    :param out: the export folder (default: the version's, under ``exports/``).
    """
    layout = Layout.at(root)
    paths = ExportPaths(Path(out)) if out is not None else layout.export(name, version)
    out = paths.dir
    data_yaml = paths.data_yaml
    if paths.done.is_file() and data_yaml.is_file():
        try:
            rule = json.loads(paths.done.read_text(encoding="utf-8")).get("labels")
        except (ValueError, AttributeError):
            rule = None
        if rule == LABELS_RULE:
            return data_yaml
    names = class_names(coco)
    class_index = {
        c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))
    }
    labeled = [i for i in coco["images"] if i.get("hitl_split", "train") == "train"]
    train = {**coco, "images": labeled}
    rows = _write_split(layout, train, paths.split("train"), "train.txt", class_index)
    _write_split(layout, val, paths.split("val"), "val.txt", class_index)
    write_json_atomic(paths.weights, rows, indent=None)
    data = {
        "path": str(out),
        "train": str(out / "train" / "train.txt"),
        "val": str(out / "val" / "val.txt"),
        "names": dict(enumerate(names)),
    }
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    paths.done.write_text(json.dumps({"dataset": name, "version": version,
                                      "labels": LABELS_RULE}))
    return data_yaml


def read_weights(data_yaml: Path) -> dict[str, float]:
    """The sampling weight of each training image of an export (path -> weight)."""
    rows = json.loads(ExportPaths(Path(data_yaml).parent).weights.read_text(encoding="utf-8"))
    return {row["path"]: float(row["weight"]) for row in rows}
