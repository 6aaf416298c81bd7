"""The storage layout under one root (see docs/ARCHITECTURE.md).

```
datasets/<name>/v0001/annotations.json   COCO, with provenance and weights
datasets/<name>/v0001/manifest.json      parent version, round, counts, hashes
datasets/<name>/LATEST                   written atomically
datasets/<name>/val.json                 clean held-out set (never sent to labeling)
images/<name>/...                        each image stored once, shared by versions
models/<dag_id>/<run_id>/                checkpoints, metrics.json (ModelPaths)
models/<dag_id>/PROMOTED.json            the promoted checkpoint and its metrics
rounds/<dag_id>/<run_id>/                selection, submissions, results, reports (RoundPaths)
exports/<name>/<version>/                YOLO layout derived from a version (ExportPaths)
```

Every file of a round folder, a model folder and an export is named here and nowhere else:
code that reads or writes one goes through :class:`RoundPaths`, :class:`ModelPaths` or
:class:`ExportPaths`. Every path is built from our own names and ids, never from what a
labeling service returns.
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
class ModelPaths:
    """One training's folder: ``models/<dag_id>/<run_id>/`` (or a named sub-folder of it)."""

    dir: Path

    @property
    def run_dir(self) -> Path:
        """Ultralytics' own output folder (``project=dir, name="train"``)."""
        return self.dir / "train"

    @property
    def last(self) -> Path:
        """The checkpoint written every epoch (optimizer state until the end)."""
        return self.run_dir / "weights" / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "weights" / "best.pt"

    @property
    def epochs(self) -> Path:
        """One JSON line per finished epoch."""
        return self.dir / "epochs.jsonl"

    @property
    def result(self) -> Path:
        """The finished training's result and lineage (the checkpoint's metadata)."""
        return self.dir / "train_result.json"

    @property
    def warm_start(self) -> Path:
        """Which weights the training started from, fixed at the first try."""
        return self.dir / "warm_start.json"

    @property
    def metrics(self) -> Path:
        """COCO metrics of the checkpoint on the clean held-out set."""
        return self.dir / "metrics.json"

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    @property
    def predictions(self) -> Path:
        """The evaluation's raw predictions on the held-out set (Ultralytics' format)."""
        return self.eval_dir / "val" / "predictions.json"


@dataclass(frozen=True)
class RoundPaths:
    """The files of one round: ``rounds/<dag_id>/<run_id>/`` and its model folder."""

    dir: Path
    models: Path

    def model(self, name: str | None = None) -> ModelPaths:
        """The round's training folder; ``name``: a second training of the round."""
        return ModelPaths(self.models / safe_component(name) if name else self.models)

    @property
    def scores(self) -> Path:
        """One scored image per JSON line (score step)."""
        return self.dir / "scores.jsonl"

    @property
    def drift_inputs(self) -> Path:
        """Box counts, confidences and embeddings of the scored and held-out images (score
        step, for the drift step)."""
        return self.dir / "drift_inputs.npz"

    @property
    def drift(self) -> Path:
        """The drift step's signals, verdict, action and per-image OOD scores."""
        return self.dir / "drift.json"

    @property
    def auto_accept(self) -> Path:
        """The calibrated auto-accept threshold of the scoring model (score step)."""
        return self.dir / "auto_accept.json"

    @property
    def selection(self) -> Path:
        """What the round sends to people (select step)."""
        return self.dir / "selection.json"

    @property
    def submissions(self) -> Path:
        """Folder of the per-batch submission records."""
        return self.dir / "submissions"

    def submission(self, start: int, stop: int) -> Path:
        """The record of one submitted batch (written before and after its import)."""
        return self.submissions / f"{int(start)}-{int(stop)}.json"

    @property
    def import_lock(self) -> Path:
        """Held by a submit task while it imports (one bulk import at a time per round)."""
        return self.submissions / ".import.lock"

    def wait_deadline(self, task_id: str) -> Path:
        """The wait's absolute deadline, kept across automatic retries."""
        return self.dir / f"{safe_component(task_id)}.wait_deadline.json"

    def project_memo(self, title: str) -> Path:
        """The labeling project set up for this round (its other batches reuse it)."""
        return self.dir / f".ls-project-{safe_component(title)[:100]}.json"

    def project_lock(self, title: str) -> Path:
        return self.dir / f".ls-project-{safe_component(title)[:100]}.lock"

    @property
    def approval(self) -> Path:
        """The person's answer to the checkpoint approval, as the gate read it (gate step)."""
        return self.dir / "approval.json"

    @property
    def ended(self) -> Path:
        """Written when the round ended at the gate (a rejected checkpoint): why, by whom."""
        return self.dir / "ended.json"

    def notified(self, event: str) -> Path:
        """The record of a notification sent once per round (``labeling_ready``, ...)."""
        return self.dir / "notifications" / f"{safe_component(event)}.json"

    @property
    def workers(self) -> Path:
        """Folder of the records of which worker ran each task try of the round."""
        return self.dir / "workers"

    def worker(self, task_id: str, map_index: int, try_number: int) -> Path:
        """The record of one task try: its worker's hostname and queue."""
        part = f"{safe_component(task_id)}.{int(map_index)}.{int(try_number)}"
        return self.workers / f"{part}.json"

    @property
    def corrections(self) -> Path:
        """The validated answers of people (collect step)."""
        return self.dir / "corrections.json"

    @property
    def merge_report(self) -> Path:
        return self.dir / "merge_report.json"

    def replay_report(self, version: str) -> Path:
        """The merge report of this round merged again (a replay onto ``version``)."""
        return self.dir / f"merge_report.replay-{safe_component(version)}.json"

    @property
    def report(self) -> Path:
        """The round's summary (report step)."""
        return self.dir / "report.json"

    @property
    def plot(self) -> Path:
        return self.dir / "report.png"

    @property
    def drift_plot(self) -> Path:
        """The drift signals of the round, pool against held-out set (report step)."""
        return self.dir / "drift.png"


@dataclass(frozen=True)
class ExportPaths:
    """The YOLO layout of one dataset version: ``exports/<name>/<version>/`` (a cache)."""

    dir: Path

    @property
    def data_yaml(self) -> Path:
        return self.dir / "data.yaml"

    @property
    def weights(self) -> Path:
        """Each training image's path and sampling weight, in ``train.txt`` order."""
        return self.dir / "weights.json"

    @property
    def done(self) -> Path:
        """Written last: the export is complete."""
        return self.dir / ".complete.json"

    def split(self, name: str) -> Path:
        return self.dir / name


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

    def export(self, name: str, version: str) -> ExportPaths:
        """Derived YOLO layout of a version (a cache: safe to delete, rebuilt on demand)."""
        return ExportPaths(self.root / "exports" / safe_component(name)
                           / safe_component(version))

    def pipeline_models(self, dag_id: str) -> Path:
        return self.root / "models" / safe_component(dag_id)

    def promoted_file(self, dag_id: str) -> Path:
        """The pipeline's promoted checkpoint record."""
        return self.pipeline_models(dag_id) / "PROMOTED.json"

    def promoted_dir(self, dag_id: str) -> Path:
        """Copies of promoted checkpoints, and ``history.jsonl`` of every promotion."""
        return self.pipeline_models(dag_id) / "promoted"

    def promotion_history(self, dag_id: str) -> Path:
        """One JSON line per promotion of the pipeline."""
        return self.promoted_dir(dag_id) / "history.jsonl"

    def promote_lock(self, dag_id: str) -> Path:
        return self.pipeline_models(dag_id) / ".promote.lock"

    def pipelines(self) -> list[str]:
        """The DAG ids that have round folders."""
        folder = self.root / "rounds"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def pipeline_rounds(self, dag_id: str) -> Path:
        """The folder holding every round folder of a pipeline."""
        return self.root / "rounds" / safe_component(dag_id)

    def rounds(self, dag_id: str) -> list[RoundPaths]:
        """The round folders of a pipeline that exist, by folder name."""
        folder = self.pipeline_rounds(dag_id)
        if not folder.is_dir():
            return []
        return [RoundPaths(d, self.pipeline_models(dag_id) / d.name)
                for d in sorted(folder.iterdir()) if d.is_dir()]

    def round(self, dag_id: str, run_id: str) -> RoundPaths:
        """The files of one round (and its model folder)."""
        return RoundPaths(self.pipeline_rounds(dag_id) / safe_component(run_id),
                          self.pipeline_models(dag_id) / safe_component(run_id))

    def image_path(self, file_name: str) -> Path:
        """Resolve a COCO ``file_name`` (relative to ``images/``), refusing escapes."""
        path = (self.images / file_name).resolve()
        if self.images.resolve() not in path.parents:
            raise ValueError(f"image path escapes the images folder: {file_name!r}")
        return path
