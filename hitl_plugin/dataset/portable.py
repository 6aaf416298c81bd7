"""``hitl dataset export``: a dataset version written out for tools that are not this one.

Two formats, each a folder that ``hitl dataset import`` reads back:

- ``coco``: ``annotations/train.json`` (the labeled images and all their annotations, crowd
  regions, ``segmentation``, provenance and weights included; the top-level ``info`` and
  ``licenses`` and every image field kept), ``annotations/val.json`` (the dataset's held-out
  set), ``annotations/pool.json`` (the unlabeled images, when there are any) and
  ``images/<file_name>``. Instances-style COCO: pycocotools ignores our extra keys.
- ``yolo``: ``data.yaml`` (``names``, ``nc``, ``train``/``val``/``pool`` folders),
  ``images/<split>/`` and ``labels/<split>/*.txt`` (one ``class cx cy w h`` line per box,
  normalized). Crowd annotations are left out (they are not boxes to train on; the count is
  in the provenance), as are polygons, weights and label provenance, which YOLO files cannot
  hold. Images are named by their file name, or ``<image id>_<file name>`` where two images
  of a split share one.

Both hold ``provenance.json``: the dataset, the version, its parent, when it was created,
its round and round key, its lineage back to the import (the rounds whose corrections it
holds), the sha256 of the version's annotations and of the held-out file, what was left out,
and when and by which airflow-hitl it was exported.

Images are **copied** by default: a tool that edits its copy in place cannot change the one
copy every version of the dataset shares. ``link=True`` (``--link``) hard-links them instead
(fast, no extra disk; the same filesystem only, else they are copied), for tools that only
read.

The folder is written beside ``out`` and renamed into place at the end; a non-empty ``out``
is refused unless ``force``, and then replaced only once the new export is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Literal

from hitl_plugin import package_version
from hitl_plugin.dataset.coco import class_names
from hitl_plugin.dataset.store import DatasetStore, _link_or_copy, file_sha256, utcnow
from hitl_plugin.dataset.yolo_format import write_yolo
from hitl_plugin.exceptions import DatasetError

log = logging.getLogger(__name__)

FORMATS = ("coco", "yolo")
PROVENANCE = "provenance.json"


def lineage(store: DatasetStore, version: str) -> list[dict]:
    """The version and its ancestors, oldest first: what each one was (import, round,
    revert)."""
    chain, seen = [], set()
    current: str | None = version
    while current is not None and current not in seen:
        seen.add(current)
        m = store.manifest(current)
        entry = {k: m.get(k) for k in ("version", "parent", "round", "round_key", "created",
                                        "note")}
        if m.get("reverted_to"):
            entry["reverted_to"] = m["reverted_to"]
        chain.append(entry)
        current = m.get("parent")
    return chain[::-1]


def _check_out(out: Path, store: DatasetStore, force: bool) -> None:
    root = store.layout.root.resolve()
    real = out.resolve()
    inside = root in real.parents and real.parts[len(root.parts)] in ("images", "datasets")
    if real == root or inside or real in root.parents:
        raise DatasetError(f"--out {out}: refusing to write into or over the storage root "
                           f"{root} (its images/ and datasets/ are the dataset itself)")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DatasetError(f"--out {out}: the folder is not empty; choose another one or pass "
                           "--force to replace what is there")


def _relative_name(file_name: str, prefix: str) -> str:
    """A stored ``file_name`` (``<dataset>/<name>``) as it was in the imported folder."""
    return file_name[len(prefix) + 1:] if file_name.startswith(prefix + "/") else file_name


def export_version(
    store: DatasetStore,
    version: str | None = None,
    *,
    fmt: Literal["coco", "yolo"],
    out: str | os.PathLike[str],
    force: bool = False,
    link: bool = False,
) -> dict:
    """Write one version (LATEST by default) to ``out`` in ``fmt``, with ``provenance.json``.

    :param store: the dataset.
    :param version: the version to export (default: LATEST).
    :param fmt: ``coco`` or ``yolo`` (see the module docstring).
    :param out: the folder to write; must be absent or empty unless ``force``.
    :param force: replace a non-empty ``out`` (once the export is complete).
    :param link: hard-link the images instead of copying them.
    :return: the provenance record, plus ``out``.
    :raises DatasetError: an unknown version or format, a non-empty ``out`` without
        ``force``, ``out`` inside the store's images/ or datasets/, or a missing image.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    version = version or store.require_latest()
    manifest = store.verify(version)  # exists and untouched
    out = Path(out)
    _check_out(out, store, force)
    coco = store.load(version, verify=False)
    val_path = store.layout.val_file(store.name)
    val = json.loads(val_path.read_text(encoding="utf-8")) if val_path.is_file() else None
    prefix = store.layout.dataset_images(store.name).relative_to(store.layout.images).as_posix()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        provenance = {
            "format": fmt,
            "dataset": store.name,
            "version": version,
            "parent": manifest.get("parent"),
            "created": manifest.get("created"),
            "round": manifest.get("round"),
            "round_key": manifest.get("round_key"),
            "note": manifest.get("note"),
            "annotations_sha256": manifest.get("sha256"),
            "counts": {k: v for k, v in manifest.get("counts", {}).items() if k != "merge"},
            "lineage": (chain := lineage(store, version)),
            "source_rounds": [e["round_key"] for e in chain if e.get("round_key")],
            "val": ({"file": str(val_path), "sha256": file_sha256(val_path),
                     "images": len(val["images"]),
                     "note": "the dataset's held-out set: the same for every version"}
                    if val is not None else None),
            "images": "hard-linked" if link else "copied",
            "exported": utcnow(),
            "exported_by": f"airflow-hitl {package_version()}",
        }
        writer = _write_coco if fmt == "coco" else _write_yolo
        provenance.update(writer(store, tmp, coco, val, prefix, link))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is for other tools
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported dataset %s %s as %s to %s", store.name, version, fmt, out)
    return {**provenance, "out": str(out)}


def _place(store: DatasetStore, img: dict, target: Path, link: bool) -> None:
    src = store.layout.image_path(img["file_name"])
    if not src.is_file():
        raise DatasetError(f"{src}: the image of image id {img['id']} is missing from the "
                           "store")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        _link_or_copy(src, target, link)


def _write_coco(store: DatasetStore, out: Path, coco: dict, val: dict | None, prefix: str,
                link: bool) -> dict:
    head = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    files = {}
    for split in ("train", "pool"):
        images = [img for img in coco["images"] if img.get("hitl_split", "train") == split]
        if split == "pool" and not images:
            continue
        if split == "pool":
            head = {k: v for k, v in head.items() if k != "hitl_history"}
        ids = {img["id"] for img in images}
        files[split] = {**head, "images": images,  # the annotations in the version's order
                        "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    if val is not None:
        files["val"] = val
    n_images = 0
    for split, data in files.items():
        images = []
        for img in data["images"]:
            name = _relative_name(img["file_name"], prefix)
            _place(store, img, out / "images" / name, link)
            images.append({**img, "file_name": name})
        n_images += len(images)
        path = out / "annotations" / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**data, "images": images}, separators=(",", ":")),
                        encoding="utf-8")
        log.info("exported %s: %s images, %s annotations", path.name, len(images),
                 len(data.get("annotations", [])))
    return {"files": sorted(f"annotations/{s}.json" for s in files), "images_written": n_images,
            "left_out": []}


def _write_yolo(store: DatasetStore, out: Path, coco: dict, val: dict | None, prefix: str,
                link: bool) -> dict:
    names = class_names(coco)
    class_index = {c["id"]: i
                   for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    splits: dict[str, dict] = {}
    for split in ("train", "pool"):
        images = [img for img in coco["images"] if img.get("hitl_split", "train") == split]
        if images or split == "train":
            splits[split] = {**coco, "images": images}
    if val is not None:
        splits = {"train": splits["train"], "val": val,
                  **({"pool": splits["pool"]} if "pool" in splits else {})}
    placed: dict[str, tuple[dict, dict[int, str]]] = {}
    image_ids: dict[str, int] = {}
    for split, data in splits.items():
        seen: dict[str, int] = {}
        for img in data["images"]:
            base = PurePosixPath(_relative_name(img["file_name"], prefix)).name
            seen[base] = seen.get(base, 0) + 1
        paths = {}
        for img in data["images"]:
            base = PurePosixPath(_relative_name(img["file_name"], prefix)).name
            name = base if seen[base] == 1 else f"{img['id']}_{base}"
            rel = f"images/{split}/{name}"
            _place(store, img, out / rel, link)
            paths[img["id"]] = rel
            image_ids[rel] = img["id"]
        placed[split] = (data, paths)
    counts = write_yolo(out, placed, names, class_index)
    left_out = []
    if counts["crowd_excluded"]:
        left_out.append(f"{counts['crowd_excluded']} crowd annotation(s) (iscrowd: 1): not "
                        "boxes to train on")
    if counts["clipped_away"]:
        left_out.append(f"{counts['clipped_away']} box(es) wholly outside their image")
    left_out.append("segmentation polygons, image weights and label provenance (YOLO "
                    "detection labels hold boxes only; export --format coco keeps them)")
    log.info("exported YOLO: %s boxes in %s split(s); %s", counts["boxes"], len(placed),
             "; ".join(left_out))
    return {"files": ["data.yaml"], "images_written": len(image_ids), "boxes": counts["boxes"],
            "crowd_excluded": counts["crowd_excluded"], "left_out": left_out,
            "image_ids": image_ids}
