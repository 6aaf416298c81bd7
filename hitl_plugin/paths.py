"""The storage layout under one root (see DESIGN.md).

```
datasets/<name>/v0001/annotations.json   COCO, with provenance and weights
datasets/<name>/v0001/manifest.json      parent version, round, counts, hashes
datasets/<name>/LATEST                   written atomically
datasets/<name>/val.json                 clean held-out set (never sent to labeling)
images/<name>/...                        each image stored once, shared by versions
models/<dag_id>/<run_id>/                checkpoints, metrics.json
models/<dag_id>/PROMOTED.json            the promoted checkpoint and its metrics
rounds/<dag_id>/<run_id>/                selection, submissions, results, merge report
exports/<name>/<version>/                YOLO layout derived from a version (a cache)
```

Every path is built from our own names and ids, never from what a labeling service returns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def safe_component(value: str) -> str:
    """Make a run id or DAG id safe as one path component (no separators, no '..')."""
    cleaned = _SAFE.sub("_", value).strip(".") or "_"
    return cleaned[:200]


@dataclass(frozen=True)
class Layout:
    """Paths under one storage root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Layout:
        return cls(Path(root).absolute())

    @property
    def images(self) -> Path:
        return self.root / "images"

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / safe_component(name)

    def dataset_images(self, name: str) -> Path:
        return self.images / safe_component(name)

    def val_file(self, name: str) -> Path:
        return self.dataset_dir(name) / "val.json"

    def export_dir(self, name: str, version: str) -> Path:
        """Derived YOLO layout of a version (a cache: safe to delete, rebuilt on demand)."""
        return self.root / "exports" / safe_component(name) / safe_component(version)

    def model_dir(self, dag_id: str, run_id: str) -> Path:
        return self.root / "models" / safe_component(dag_id) / safe_component(run_id)

    def promoted_file(self, dag_id: str) -> Path:
        return self.root / "models" / safe_component(dag_id) / "PROMOTED.json"

    def round_dir(self, dag_id: str, run_id: str) -> Path:
        return self.root / "rounds" / safe_component(dag_id) / safe_component(run_id)

    def image_path(self, file_name: str) -> Path:
        """Resolve a COCO ``file_name`` (relative to ``images/``), refusing escapes."""
        path = (self.images / file_name).resolve()
        if self.images.resolve() not in path.parents:
            raise ValueError(f"image path escapes the images folder: {file_name!r}")
        return path
