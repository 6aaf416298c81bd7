"""Immutable, versioned COCO datasets under the storage root.

A version is a folder ``datasets/<name>/vNNNN/`` holding ``annotations.json`` and
``manifest.json``. It is written into a temporary folder first and renamed into place,
then ``LATEST`` is replaced atomically; a crash at any point leaves the previous version
and ``LATEST`` intact. Loading verifies the sha256 recorded in the manifest.

``annotations.json`` is written one image or annotation per line. It stays plain COCO JSON
(pycocotools loads it), and a merge can stream it line by line without holding a hundred
thousand Python dicts in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hitl_plugin.dataset.coco import read_coco, validate_coco
from hitl_plugin.exceptions import DatasetError
from hitl_plugin.locks import file_lock
from hitl_plugin.paths import Layout
from hitl_plugin.schemas import MANIFEST_SCHEMA, check_schema, write_json_atomic

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v(\d{4,})$")
ANNOTATIONS = "annotations.json"
MANIFEST = "manifest.json"
FORMAT = "hitl-coco-lines/1"
_HEAD_KEYS = ("info", "licenses", "categories")
_LIST_KEYS = ("images", "annotations", "hitl_history")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(version: str) -> int:
    match = VERSION_RE.match(version)
    if not match:
        raise DatasetError(f"not a version name: {version!r}")
    return int(match.group(1))


class _HashingWriter:
    """Write text as UTF-8 to a binary file while hashing it."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.sha.update(data)
        self.size += len(data)
        self.fh.write(data)


def write_coco_lines(fh: Any, coco: dict, lists: dict[str, Iterator[str]] | None = None) -> None:
    """Write COCO as JSON with one list item per line.

    :param fh: an object with ``write(str)``.
    :param coco: the head keys and, unless ``lists`` gives them, the list keys.
    :param lists: optional pre-serialized lines per list key (used by streaming merges).
    """
    dumps = json.dumps
    fh.write("{")
    first = True
    for key in _HEAD_KEYS:
        if key in coco:
            fh.write(("" if first else ",\n") + f"{dumps(key)}: {dumps(coco[key])}")
            first = False
    for key in _LIST_KEYS:
        if lists is not None and key in lists:
            lines: Iterator[str] = lists[key]
        elif key in coco:
            lines = (dumps(item, separators=(",", ":")) for item in coco[key])
        else:
            continue
        fh.write(("" if first else ",\n") + f"{dumps(key)}: [")
        first = False
        sep = "\n"
        for line in lines:
            fh.write(sep + line)
            sep = ",\n"
        fh.write("\n]")
    fh.write("}\n")


def iter_coco_lines(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(list_key, item_json)`` for every list item of a file we wrote.

    Head keys come as ``("head:<key>", value_json)``. Raises :class:`DatasetError` when the
    file is not in our one-item-per-line layout.
    """
    current: str | None = None
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if current is None:
                text = line.lstrip("{")
                if not text or text == "}":
                    continue
                key, _, value = text.partition(": ")
                key = json.loads(key)
                if value == "[":
                    current = key
                elif value.endswith(","):
                    yield f"head:{key}", value[:-1]
                else:
                    raise DatasetError(f"{path}:{number}: not in {FORMAT} layout")
            elif line in ("]", "],", "]}"):
                current = None
            else:
                yield current, line[:-1] if line.endswith(",") else line


def _phase(name: str) -> None:
    """Mark a phase of a publish in the debug log (the crash tests kill at each one)."""
    log.debug("publish phase: %s", name)


class DatasetStore:
    """The versions of one named dataset.

    :param root: the storage root.
    :param name: the dataset name.
    """

    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        self.layout = Layout.at(root)
        self.name = name
        self.dir = self.layout.dataset_dir(name)

    # -- reading ---------------------------------------------------------------------------

    def _folders(self) -> list[str]:
        """Every folder named like a version, published or not, in order."""
        if not self.dir.is_dir():
            return []
        found = [p.name for p in self.dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=version_number)

    def versions(self) -> list[str]:
        """The published versions, in order. A folder named like a version but without a
        manifest (left by hand, or half-copied) is not one: it is skipped, with a warning."""
        found = []
        for name in self._folders():
            if (self.dir / name / MANIFEST).is_file():
                found.append(name)
            else:
                log.warning("dataset %s: %s has no %s; it is not a version and is skipped",
                            self.name, self.dir / name, MANIFEST)
        return found

    def next_version(self) -> str:
        """The name the next published version gets (above every version-named folder)."""
        folders = self._folders()
        return version_name(version_number(folders[-1]) + 1 if folders else 1)

    def latest(self) -> str | None:
        """The version named by LATEST, or None when the dataset has none yet."""
        try:
            version = (self.dir / "LATEST").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not (self.dir / version / MANIFEST).is_file():
            raise DatasetError(f"{self.dir / 'LATEST'} names {version!r}, which does not exist")
        return version

    def require_latest(self) -> str:
        version = self.latest()
        if version is None:
            raise DatasetError(f"dataset {self.name!r} has no version under {self.dir}")
        return version

    def version_dir(self, version: str) -> Path:
        version_number(version)
        return self.dir / version

    def annotations_path(self, version: str) -> Path:
        return self.version_dir(version) / ANNOTATIONS

    def manifest(self, version: str) -> dict:
        path = self.version_dir(version) / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"dataset {self.name!r} has no version {version}") from None
        except ValueError as exc:  # not JSON, or not UTF-8
            raise DatasetError(f"{path}: the manifest is corrupt ({exc}); restore it from a "
                               "backup or move the version folder away") from None
        if not isinstance(manifest, dict):
            raise DatasetError(f"{path}: the manifest is not a JSON object")
        check_schema(manifest, MANIFEST_SCHEMA, str(path))
        return manifest

    def verify(self, version: str) -> dict:
        """Check the annotations file against the manifest's sha256; return the manifest."""
        manifest = self.manifest(version)
        if file_sha256(self.annotations_path(version)) != manifest["sha256"]:
            raise DatasetError(
                f"{self.annotations_path(version)}: sha256 does not match {MANIFEST} "
                "(the version was changed after publishing)"
            )
        return manifest

    def load(self, version: str | None = None, *, verify: bool = True) -> dict:
        """Load a version (LATEST by default) as a COCO dict, after checking its hash."""
        version = version or self.require_latest()
        if verify:
            self.verify(version)
        with open(self.annotations_path(version), encoding="utf-8") as fh:
            return json.load(fh)

    def find_by_key(self, key: str) -> str | None:
        """The version whose manifest records ``round_key == key`` (idempotent merges)."""
        for version in reversed(self.versions()):
            if self.manifest(version).get("round_key") == key:
                return version
        return None

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize publishers of this dataset (across processes)."""
        with file_lock(self.dir / ".lock", what=f"publishing dataset {self.name}"):
            yield

    def publish(
        self,
        coco: dict | None = None,
        *,
        parent: str | None,
        round: int | None = None,
        round_key: str | None = None,
        note: str = "",
        extra: dict | None = None,
        writer: Callable[[Any], dict] | None = None,
        validate: bool = True,
        _before_latest: Callable[[str], None] | None = None,
    ) -> str:
        """Publish a new immutable version and point LATEST at it.

        Give either ``coco`` (a dict, validated first) or ``writer``, a function that
        writes the annotations through ``write(str)`` and returns the counts for the
        manifest (for streaming merges that never hold the whole dataset).

        :param parent: the version this one derives from (None for the first).
        :param round: the round number recorded in the manifest.
        :param round_key: an idempotency key; publishing a key already published
            returns the existing version instead of a new one.
        :param note: free text for people.
        :param extra: more manifest fields (merge statistics and the like).
        :return: the new version's name.
        """
        if (coco is None) == (writer is None):
            raise ValueError("give exactly one of coco or writer")
        if coco is not None and validate:
            validate_coco(coco, source=f"dataset {self.name} (new version)")
        with self.lock():
            if round_key is not None:
                existing = self.find_by_key(round_key)
                if existing is not None:
                    log.info("round %s already published as %s", round_key, existing)
                    return existing
            version = self.next_version()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.dir))
            try:
                with open(tmp / ANNOTATIONS, "wb") as raw:
                    out = _HashingWriter(raw)
                    counts = writer(out) if writer is not None else _counts_written(out, coco)
                    raw.flush()
                    _phase("fsync")
                    os.fsync(raw.fileno())
                manifest = {
                    "schema_version": MANIFEST_SCHEMA,
                    "format": FORMAT,
                    "dataset": self.name,
                    "version": version,
                    "parent": parent,
                    "round": round,
                    "round_key": round_key,
                    "created": utcnow(),
                    "note": note,
                    "counts": counts,
                    "sha256": out.sha.hexdigest(),
                    "bytes": out.size,
                    **(extra or {}),
                }
                write_json_atomic(tmp / MANIFEST, manifest)
                for name in (ANNOTATIONS, MANIFEST):  # immutable: a reminder, not a guarantee
                    os.chmod(tmp / name, 0o444)
                _phase("rename")
                os.rename(tmp, self.dir / version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(self.dir)
            if _before_latest is not None:
                _before_latest(version)
            _phase("latest")
            self._set_latest(version)
            log.info("published dataset %s %s (parent %s): %s", self.name, version, parent, counts)
            return version

    def revert(self, version: str, *, reason: str, extra: dict | None = None) -> str:
        """Publish a new version equal to ``version``: a bad round is taken back, and nothing
        is deleted (the versions in between stay, readable).

        The new version's parent is LATEST; its manifest records ``reverted_to``, the
        ``reason`` and the round keys of the versions it takes back.

        :raises DatasetError: an unknown version, the one already LATEST, or no reason.
        """
        if not reason or not reason.strip():
            raise DatasetError("a revert needs a reason (it is kept in the manifest)")
        source = self.verify(version)  # exists, untouched
        latest = self.require_latest()
        if version == latest:
            raise DatasetError(f"dataset {self.name!r}: {version} is already LATEST")
        later = [v for v in self.versions() if version_number(v) > version_number(version)]
        taken_back = [self.manifest(v).get("round_key") for v in later]

        def copy(out: Any) -> dict:
            with open(self.annotations_path(version), encoding="utf-8") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), ""):
                    out.write(chunk)
            return source["counts"]

        published = self.publish(
            writer=copy, parent=latest, round=None, note=f"revert to {version}: {reason}",
            extra={"reverted_to": version, "reason": reason.strip(),
                   "reverted_versions": later,
                   "reverted_rounds": [k for k in taken_back if k], **(extra or {})})
        log.info("dataset %s: %s reverts to %s (%s); takes back %s", self.name, published,
                 version, reason, later)
        return published

    def _set_latest(self, version: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".LATEST.", dir=self.dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "LATEST")
        _fsync_dir(self.dir)

    def recover(self) -> None:
        """Remove temporary folders left by a crashed publisher (never a published version)."""
        for path in self.dir.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    # -- import ----------------------------------------------------------------------------

    def import_source(self, source_dir: str | os.PathLike[str], *, link: bool = True) -> str:
        """Create v0001 from a COCO folder (the layout ``hitl synth`` writes) or a YOLO one.

        COCO: ``annotations/train.json`` becomes the labeled split, ``annotations/pool.json``
        (if present) the unlabeled pool, and ``annotations/val.json`` the held-out set beside
        the versions; ``file_name`` is relative to ``images/``. YOLO: a ``data.yaml`` with
        ``train``, ``val`` and optionally ``pool`` (see :mod:`hitl_plugin.dataset.yolo_format`),
        read as the same COCO and validated the same way. A folder with both is read as COCO.

        Images are placed once under ``images/<name>/`` (hard links when the filesystem
        allows, copies otherwise) and shared by every later version. The top-level
        ``licenses`` and ``info`` and every image field (``license``, ``coco_url``,
        ``flickr_url``, ``date_captured``, ...) are kept.
        """
        from hitl_plugin.dataset.yolo_format import find_data_yaml, read_yolo

        source = Path(source_dir)
        if self.latest() is not None:
            raise DatasetError(f"dataset {self.name!r} already exists under {self.dir}")
        data_yaml = find_data_yaml(source)
        if (source / "annotations" / "train.json").is_file() or data_yaml is None:
            if data_yaml is not None:
                log.info("%s has annotations/train.json and %s: importing the COCO files",
                         source, data_yaml.name)
            elif not (source / "annotations").is_dir():
                raise DatasetError(f"{source}: neither a COCO folder (annotations/train.json, "
                                   "val.json, images/) nor a YOLO one (data.yaml)")
            train = read_coco(source / "annotations" / "train.json")
            val = read_coco(source / "annotations" / "val.json")
            pool_path = source / "annotations" / "pool.json"
            pool = (read_coco(pool_path, require_annotations=False)
                    if pool_path.exists() else None)
            images_dir = source / "images"
            names = {"train": "train.json", "val": "val.json", "pool": str(pool_path)}
        else:
            yolo = read_yolo(data_yaml)
            train, val, pool = yolo.splits["train"], yolo.splits["val"], yolo.splits["pool"]
            images_dir = yolo.base
            names = {k: f"{data_yaml} ({k})" for k in ("train", "val", "pool")}
        return self._import(source, train, val, pool, images_dir, names, link=link)

    def _import(self, source: Path, train: dict, val: dict, pool: dict | None,
                images_dir: Path, names: dict[str, str], *, link: bool) -> str:
        """Place the images of validated COCO splits and publish v0001."""
        if pool is not None and pool["categories"] != train["categories"]:
            raise DatasetError(f"{names['pool']}: categories differ from {names['train']}")
        if val["categories"] != train["categories"]:
            raise DatasetError(f"{names['val']}: categories differ from {names['train']}")

        prefix = self.layout.dataset_images(self.name)
        rel_prefix = prefix.relative_to(self.layout.images).as_posix()

        def place(images: list[dict], split: str | None) -> list[dict]:
            placed = []
            for img in images:
                src = images_dir / img["file_name"]
                dst = prefix / img["file_name"]
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if not src.is_file():
                        raise DatasetError(f"{src}: image of image id {img['id']} is missing")
                    _link_or_copy(src, dst, link)
                new = {**img, "file_name": f"{rel_prefix}/{img['file_name']}"}
                if split is not None:
                    new.setdefault("weight", 1.0)
                    new["hitl_split"] = split
                placed.append(new)
            return placed

        ids = {img["id"] for img in train["images"]}
        if pool is not None and ids & {img["id"] for img in pool["images"]}:
            raise DatasetError(f"{names['pool']}: image ids overlap with {names['train']}")
        check_source_images(images_dir, train["images"] + val["images"]
                            + (pool["images"] if pool is not None else []))
        images = place(train["images"], "train")
        if pool is not None:
            images += place(pool["images"], "pool")
        annotations = [{**a, "source": a.get("source", "original")} for a in train["annotations"]]
        coco = {
            "info": {**train.get("info", {}), "hitl_dataset": self.name},
            "categories": train["categories"],
            "images": images,
            "annotations": annotations,
        }
        licenses = merged_licenses(train, pool)
        if licenses is not None:
            coco["licenses"] = licenses
        val_out = {**val, "images": place(val["images"], None)}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.layout.val_file(self.name), val_out, indent=None)
        return self.publish(coco, parent=None, round=0, note=f"imported from {source}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def merged_licenses(*cocos: dict | None) -> list | None:
    """The top-level ``licenses`` of several COCO files, one entry per id (the first wins);
    None when none of them has the key."""
    found = [c["licenses"] for c in cocos if c is not None and isinstance(c.get("licenses"),
                                                                         list)]
    if not found:
        return None
    out, seen = [], set()
    for licenses in found:
        for lic in licenses:
            key = lic.get("id") if isinstance(lic, dict) else repr(lic)
            if key not in seen:
                seen.add(key)
                out.append(lic)
    return out


def check_source_images(folder: Path, images: list[dict], *, cap: int = 50) -> None:
    """Refuse images that leave the source folder (through a symlink or ``..``) or whose
    real size is not the size the COCO file declares (every box would be scaled wrongly).

    :raises DatasetError: naming each bad file (the first ``cap``) and the count.
    """
    from PIL import Image, UnidentifiedImageError

    root = folder.resolve()
    problems: list[str] = []
    for img in images:
        src = folder / img["file_name"]
        real = src.resolve()
        if root not in real.parents:
            problems.append(f"{src}: leaves the source folder (resolves to {real})")
            continue
        if not real.is_file():
            continue  # reported as missing where it is placed
        try:
            with Image.open(real) as opened:
                size = opened.size
        except (OSError, UnidentifiedImageError) as exc:
            problems.append(f"{src}: not a readable image ({exc})")
            continue
        if size != (int(img["width"]), int(img["height"])):
            problems.append(f"{src}: is {size[0]}x{size[1]} px, but image id {img['id']} is "
                            f"declared {img['width']}x{img['height']}")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:cap])
        more = f"\n  ... and {len(problems) - cap} more" if len(problems) > cap else ""
        raise DatasetError(f"{folder}: {len(problems)} image(s) refused\n{shown}{more}")


def _counts_written(out: _HashingWriter, coco: dict) -> dict:
    write_coco_lines(out, coco)
    return coco_counts(coco)


def coco_counts(coco: dict) -> dict:
    """Counts recorded in a manifest."""
    splits: dict[str, int] = {}
    for img in coco["images"]:
        split = img.get("hitl_split", "train")
        splits[split] = splits.get(split, 0) + 1
    sources: dict[str, int] = {}
    for ann in coco.get("annotations", []):
        src = ann.get("source", "original")
        sources[src] = sources.get(src, 0) + 1
    return {
        "images": len(coco["images"]),
        "annotations": len(coco.get("annotations", [])),
        "categories": len(coco["categories"]),
        "splits": splits,
        "sources": sources,
        "weighted_images": sum(1 for img in coco["images"] if img.get("weight", 1.0) != 1.0),
    }


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
