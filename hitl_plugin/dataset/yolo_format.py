"""YOLO-format folders (the Ultralytics detection layout), read as COCO and written from it.

A YOLO folder is a ``data.yaml`` with ``names`` (a list, or a ``{index: name}`` dict whose
keys are ``0..n-1``), ``train``, ``val`` and optionally ``pool``, each a folder of images (or
a list of folders). Relative paths are relative to the ``path`` key, itself relative to the
folder of ``data.yaml`` (default: that folder). As in Ultralytics, an image's label file is
found by replacing the last ``/images/`` of its path with ``/labels/`` and its suffix with
``.txt``; one line per object, ``class cx cy w h`` normalized to the image size.

Reading (:func:`read_yolo`):

- every image is opened with Pillow for its size; an unreadable one is an error;
- an image without a label file has no objects (as in Ultralytics);
- a label file without an image, a line that is not ``class cx cy w h``, a class not in
  ``names``, a coordinate outside ``[0, 1]`` or a box without area is an error naming the
  file and the line (``labels/train/img3.txt:2: class 7 not in names (0..2)``);
- a segment line (``class x1 y1 x2 y2 ...``, at least three points) becomes the box of the
  polygon's extent, and the polygon is kept as the annotation's COCO ``segmentation``;
- exact duplicate lines are dropped (as Ultralytics does), with a warning;
- ``pool`` images are the unlabeled pool: their label files, if any, are not read (a
  warning says how many), as ``pool.json``'s annotations are not at a COCO import.

The result is the same in-memory COCO (train, val, pool) that a COCO import reads, and it
goes through the same validation (:func:`hitl_plugin.dataset.coco.validate_coco`). Category
ids are the class index + 1; image and annotation ids are numbered from 1 in the order
train, val, pool (files sorted by path).

Writing (:func:`write_yolo`) is the reverse, for ``hitl dataset export --format yolo``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hitl_plugin.dataset.coco import MAX_SHOWN, annotations_by_image, validate_coco
from hitl_plugin.dataset.coco import _Problems as CappedProblems  # the same count and cap
from hitl_plugin.dataset.export import yolo_line
from hitl_plugin.exceptions import DatasetError

log = logging.getLogger(__name__)

#: Names of the dataset file a YOLO folder is recognised by.
DATA_YAML_NAMES = ("data.yaml", "data.yml")
#: Image suffixes Ultralytics trains on (``ultralytics.data.utils.IMG_FORMATS``).
IMG_FORMATS = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff",
                         ".webp", ".pfm", ".heic"})
SPLITS = ("train", "val", "pool")
#: Decimals of pixel coordinates read from normalized YOLO numbers.
_DECIMALS = 3


def find_data_yaml(folder: str | os.PathLike[str]) -> Path | None:
    """The ``data.yaml`` (or ``data.yml``) of a folder, or None when it is not a YOLO one."""
    for name in DATA_YAML_NAMES:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


class _Problems(CappedProblems):
    """Problems of one read, each ``file:line: what`` relative to the dataset folder (the
    COCO validation's counting and cap)."""

    def __init__(self, base: Path, cap: int = MAX_SHOWN) -> None:
        super().__init__(cap)
        self.base = base

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.base).as_posix()
        except ValueError:
            return str(path)

    def add(self, path: Path, message: str, line: int | None = None) -> None:  # type: ignore[override]
        where = self.rel(path) + (f":{line}" if line is not None else "")
        super().add(f"{where}: {message}")

    def raise_if_any(self, data_yaml: Path) -> None:
        if self.total:
            shown = "\n".join(f"  - {p}" for p in self.shown)
            more = (f"\n  ... and {self.total - len(self.shown)} more"
                    if self.total > len(self.shown) else "")
            raise DatasetError(f"{data_yaml}: {self.total} problem(s) in YOLO dataset "
                               f"(paths relative to {self.base})\n{shown}{more}")


def class_names_of(data: dict, where: str) -> list[str]:
    """The class names of a ``data.yaml`` (a list, or a dict of indices ``0..n-1``).

    :raises DatasetError: ``names`` missing or malformed, or ``nc`` disagreeing with it.
    """
    names = data.get("names")
    if isinstance(names, dict):
        try:
            indexed = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class indices, got "
                               f"{sorted(map(str, names))[:5]}") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise DatasetError(f"{where}: a {len(indexed)}-class 'names' needs the indices "
                               f"0..{len(indexed) - 1}, got {sorted(indexed)[:10]}")
        names = [indexed[i] for i in range(len(indexed))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{where}: 'names' must be a non-empty list or {{index: name}} dict")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, (str, int, float)) or isinstance(name, bool) or not str(name):
            raise DatasetError(f"{where}: names[{i}] must be a non-empty name, got {name!r}")
        out.append(str(name))
    if len(set(out)) != len(out):
        raise DatasetError(f"{where}: class names repeat: {out}")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise DatasetError(f"{where}: nc is {nc!r} but 'names' has {len(out)} classes")
    return out


def label_path(image: Path) -> Path:
    """The label file of an image, by Ultralytics' rule (last ``/images/`` -> ``/labels/``)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


@dataclass
class YoloSource:
    """A YOLO folder read as COCO: one dict per split (``pool`` may be None)."""

    data_yaml: Path
    #: the folder every image ``file_name`` is relative to
    base: Path
    names: list[str]
    splits: dict[str, dict | None] = field(default_factory=dict)


def _split_dirs(data: dict, split: str, base: Path, where: str) -> list[Path] | None:
    value = data.get(split)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    dirs = []
    for item in values:
        if not isinstance(item, str) or not item:
            raise DatasetError(f"{where}: '{split}' must be a folder (or a list of folders), "
                               f"got {item!r}")
        path = Path(item) if Path(item).is_absolute() else base / item
        if path.suffix == ".txt":
            raise DatasetError(f"{where}: '{split}: {item}' is a list file; point '{split}' at "
                               "a folder of images (images/<split>/) instead")
        if not path.is_dir():
            raise DatasetError(f"{where}: '{split}' folder {path} does not exist")
        if path.resolve() != base.resolve() and base.resolve() not in path.resolve().parents:
            raise DatasetError(f"{where}: '{split}' folder {path} is outside the dataset "
                               f"folder {base}")
        dirs.append(path)
    return dirs


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as opened:
        return opened.size


def _parse_line(text: str, n_classes: int, width: int, height: int) -> tuple[dict | None, str]:
    """One label line as ``(annotation fields, "")`` or ``(None, why it is wrong)``."""
    tokens = text.split()
    try:
        numbers = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        return None, f"not a number: {bad[:20]!r}"
    n = len(numbers)
    is_polygon = n >= 7
    if n != 5 and not is_polygon:
        return None, f"expected 5 numbers (class cx cy w h), got {n}"
    if is_polygon and (n - 1) % 2:
        return None, (f"expected 5 numbers (a box) or a class and x y pairs (a polygon), "
                      f"got {n} (an odd number of coordinates)")
    if not all(math.isfinite(v) for v in numbers):
        return None, "a number is not finite"
    cls = numbers[0]
    if cls != int(cls):
        return None, f"class {tokens[0]} is not an integer"
    if not 0 <= int(cls) < n_classes:
        return None, f"class {int(cls)} not in names (0..{n_classes - 1})"
    coords = numbers[1:]
    outside = [t for t, v in zip(tokens[1:], coords) if not 0.0 <= v <= 1.0]
    if outside:
        return None, (f"coordinates outside [0, 1]: {', '.join(outside[:4])} (YOLO numbers "
                      "are fractions of the image size)")
    if is_polygon:
        xs = [v * width for v in coords[0::2]]
        ys = [v * height for v in coords[1::2]]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        polygon = [round(v, _DECIMALS) for xy in zip(xs, ys) for v in xy]
        area = abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
    else:
        cx, cy, w, h = coords
        x0, y0 = max(0.0, (cx - w / 2) * width), max(0.0, (cy - h / 2) * height)
        x1, y1 = min(float(width), (cx + w / 2) * width), min(float(height), (cy + h / 2) * height)
        polygon, area = None, None
    bbox = [round(x0, _DECIMALS), round(y0, _DECIMALS), round(x1 - x0, _DECIMALS),
            round(y1 - y0, _DECIMALS)]
    if bbox[2] <= 0 or bbox[3] <= 0:
        return None, "the box has no area"
    ann: dict[str, Any] = {"category_id": int(cls) + 1, "bbox": bbox,
                           "area": round(area if area is not None else bbox[2] * bbox[3], 2),
                           "iscrowd": 0}
    if polygon is not None:
        ann["segmentation"] = [polygon]
    return ann, ""


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _list_images(dirs: list[Path]) -> list[Path]:
    found = {p for d in dirs for p in d.rglob("*")
             if p.suffix.lower() in IMG_FORMATS and p.is_file()}
    return sorted(found)


def read_yolo(data_yaml: str | os.PathLike[str]) -> YoloSource:
    """Read a YOLO folder as COCO (train, val, pool), validated as a COCO import is.

    :raises DatasetError: a bad ``data.yaml``, or the problems of the label files and images
        (each ``file:line: what``, the first :data:`~hitl_plugin.dataset.coco.MAX_SHOWN`, and
        the count).
    :raises CocoError: the converted data fails the COCO validation.
    """
    data_yaml = Path(data_yaml)
    where = str(data_yaml)
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{where}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: must be a mapping with names, train and val")
    names = class_names_of(data, where)
    root = data_yaml.parent.absolute()
    base = Path(data["path"]) if isinstance(data.get("path"), str) and data["path"] else root
    if not base.is_absolute():
        base = root / base
    if not base.is_dir():
        raise DatasetError(f"{where}: 'path' folder {base} does not exist")
    dirs = {}
    for split in SPLITS:
        dirs[split] = _split_dirs(data, split, base, where)
        if dirs[split] is None and split != "pool":
            raise DatasetError(f"{where}: '{split}' is missing (a folder of images)")
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    problems = _Problems(base)
    source = YoloSource(data_yaml=data_yaml, base=base, names=names)
    seen: dict[Path, str] = {}
    image_id = ann_id = 0
    for split in SPLITS:
        if dirs[split] is None:
            source.splits[split] = None
            continue
        images, annotations, dropped, ignored = [], [], 0, 0
        paths = _list_images(dirs[split])
        if not paths:
            problems.add(dirs[split][0], f"no images for '{split}' "
                         f"({', '.join(sorted(IMG_FORMATS))})")
        wanted_labels = set()
        for path in paths:
            real = path.resolve()
            if real in seen:
                problems.add(path, f"is in both '{seen[real]}' and '{split}'")
                continue
            seen[real] = split
            try:
                width, height = _image_size(path)
            except Exception as exc:  # Pillow raises many kinds for a bad file
                problems.add(path, f"not a readable image ({exc})")
                continue
            image_id += 1
            images.append({"id": image_id, "file_name": problems.rel(path),
                           "width": width, "height": height})
            labels = label_path(path)
            wanted_labels.add(labels)
            if split == "pool":
                ignored += labels.is_file()
                continue
            try:
                lines = labels.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue  # no label file: no objects
            except (OSError, UnicodeDecodeError) as exc:
                problems.add(labels, f"cannot read ({exc})")
                continue
            unique: set[str] = set()
            for number, text in enumerate(lines, 1):
                text = text.strip()
                if not text:
                    continue
                key = " ".join(text.split())
                if key in unique:
                    dropped += 1
                    continue
                unique.add(key)
                ann, why = _parse_line(text, len(names), width, height)
                if ann is None:
                    problems.add(labels, why, number)
                    continue
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, **ann})
        _check_orphans(dirs[split], wanted_labels, problems)
        if dropped:
            log.warning("%s: %s duplicate label line(s) in '%s' dropped", where, dropped, split)
        if ignored:
            log.warning("%s: %s label file(s) of 'pool' images not read (the pool is "
                        "unlabeled)", where, ignored)
        source.splits[split] = {
            "info": {"description": f"imported from {data_yaml}"},
            "images": images, "annotations": annotations, "categories": categories}
        log.info("read YOLO %s: %s images, %s boxes", split, len(images), len(annotations))
    problems.raise_if_any(data_yaml)
    for split, coco in source.splits.items():
        if coco is not None:
            validate_coco(coco, source=f"{where} ({split}, as COCO)",
                          require_annotations=split != "pool")
    return source


def _check_orphans(dirs: list[Path], wanted: set[Path], problems: _Problems) -> None:
    """Refuse label files of a split's label folders that belong to no image."""
    for folder in dirs:
        labels_dir = label_path(folder / "x").parent
        if labels_dir == folder or not labels_dir.is_dir():
            continue  # labels beside the images, or none at all
        for txt in sorted(labels_dir.rglob("*.txt")):
            if txt not in wanted and txt.name != "classes.txt":
                stem = txt.relative_to(labels_dir).with_suffix("")
                problems.add(txt, "missing image for label (no image "
                             f"{problems.rel(folder / stem)}.*)")


# -- writing ---------------------------------------------------------------------------------


def write_yolo(out: Path, splits: dict[str, tuple[dict, dict[int, str]]],
               names: list[str], class_index: dict[int, int]) -> dict[str, int]:
    """Write ``labels/<split>/*.txt`` and ``data.yaml`` for images already placed.

    :param out: the export folder.
    :param splits: split -> (its COCO dict, image id -> the image's path under ``out``,
        ``images/<split>/<name>``).
    :param names: class names, in class order.
    :param class_index: category id -> class index.
    :return: counts: ``boxes`` written, ``crowd_excluded``, ``clipped_away``.
    """
    counts = {"boxes": 0, "crowd_excluded": 0, "clipped_away": 0}
    for split, (coco, placed) in splits.items():
        grouped = annotations_by_image(coco)
        for img in coco["images"]:
            lines = []
            for ann in grouped.get(img["id"], []):
                if ann.get("iscrowd"):
                    counts["crowd_excluded"] += 1
                    continue
                line = yolo_line(ann["bbox"], img["width"], img["height"],
                                     class_index[ann["category_id"]])
                if line is None:
                    counts["clipped_away"] += 1
                    continue
                lines.append(line)
            if split == "pool" or not lines:
                continue  # no label file: no objects (and the pool is unlabeled)
            target = out / label_path(Path(placed[img["id"]]))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            counts["boxes"] += len(lines)
    data = {name: f"images/{name}" for name in splits}
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return counts
