"""One Label Studio project per pipeline: found by title, created once, kept up to date."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from html import unescape
from pathlib import Path

from hitl_plugin.labeling.client import LabelStudioClient, LabelStudioError
from hitl_plugin.labeling.tasks import label_config

log = logging.getLogger(__name__)

_LABEL = re.compile(r"<Label\b[^>]*\bvalue=(\"[^\"]*\"|'[^']*')")
STORAGE_TITLE = "hitl images"


def config_labels(config: str) -> set[str]:
    """The ``<Label value=...>`` values of a label config."""
    return {unescape(m.group(1)[1:-1]) for m in _LABEL.finditer(config or "")}


@contextmanager
def _lock(title: str, lock_dir: Path | None):
    """Serialise project setup of parallel submit tasks on one machine (mapped batches)."""
    folder = Path(lock_dir) if lock_dir is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", title)[:100]
    with open(folder / f".ls-project-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_project(client: LabelStudioClient, *, title: str, class_names: list[str],
                   images_root: Path, model_version: str, lock_dir: Path | None = None) -> int:
    """Return the id of the project titled ``title``, creating or updating it as needed.

    See :func:`ensure_project_info`.
    """
    return ensure_project_info(client, title=title, class_names=class_names,
                               images_root=images_root, model_version=model_version,
                               lock_dir=lock_dir)["id"]


def ensure_project_info(client: LabelStudioClient, *, title: str, class_names: list[str],
                        images_root: Path, model_version: str,
                        lock_dir: Path | None = None) -> dict:
    """Find or create the project titled ``title`` and bring it up to date.

    :return: ``{"id": project id, "model_version_ok": whether the project shows
        ``model_version`` already}`` (False: set it after the import, see
        :func:`set_model_version`).

    - creates it with a RectangleLabels config listing ``class_names`` when no project has the
      title (the lowest id wins if several do); adds missing classes to an existing config;
    - registers the local-files storage for ``images_root`` once (never synced: our tasks
      point at the files themselves);
    - PATCHes the project's ``model_version`` when it differs, so that annotators see this
      round's predictions.

    Two tasks creating the project at once (on machines that do not share ``lock_dir``) both
    end up on the lowest id; the extra empty project is deleted.

    With a ``lock_dir`` (the round folder), a setup that left the project complete is
    remembered there, and the round's other batches reuse it without asking the service
    again (the mapped submit tasks of one round share the project).
    """
    if not class_names:
        raise ValueError("ensure_project needs at least one class name")
    path = str(Path(images_root).absolute())
    want = {"title": title, "classes": sorted(class_names), "images_root": path,
            "model_version": model_version, "url": client.url}
    memo = None
    if lock_dir is not None:
        digest = re.sub(r"[^A-Za-z0-9_.-]", "_", title)[:100]
        memo = Path(lock_dir) / f".ls-project-{digest}.json"
    with _lock(title, lock_dir):
        if memo is not None and memo.is_file():
            try:
                known = json.loads(memo.read_text())
            except ValueError:
                known = {}
            if known.get("setup") == want:
                return {"id": int(known["id"]), "model_version_ok": True}
        info = _ensure_project(client, title=title, class_names=class_names, path=path,
                               model_version=model_version)
        if memo is not None and info["model_version_ok"]:
            memo.write_text(json.dumps({"setup": want, "id": info["id"]}))
        return info


def _ensure_project(client: LabelStudioClient, *, title: str, class_names: list[str],
                    path: str, model_version: str) -> dict:
    project = client.find_project(title)
    if project is None:
        created = client.create_project(title, label_config(class_names),
                                        model_version=model_version)
        project = client.find_project(title) or created
        if project["id"] != created["id"]:
            log.warning("Project %r was created twice; keeping id %s", title, project["id"])
            try:
                client.request("DELETE", f"/api/projects/{int(created['id'])}/")
            except LabelStudioError as exc:
                log.warning("Could not delete the extra project %s: %s", created["id"], exc)
        log.info("Created Label Studio project %r (id %s)", title, project["id"])
    project_id = int(project["id"])
    if "label_config" not in project or "model_version" not in project:
        project = client.get_project(project_id)
    missing = [n for n in class_names if n not in config_labels(project.get("label_config"))]
    if missing:
        log.info("Adding classes %s to the label config of project %s", missing, project_id)
        names = sorted(config_labels(project.get("label_config"))) + missing
        client.update_project(project_id, label_config=label_config(names))
    if not any(str(s.get("path", "")).rstrip(os.sep) == path.rstrip(os.sep)
               for s in client.local_storages(project_id)):
        Path(path).mkdir(parents=True, exist_ok=True)
        client.create_local_storage(project_id, path, STORAGE_TITLE)
        log.info("Registered local-files storage %s for project %s", path, project_id)
    ok = project.get("model_version") == model_version
    if not ok:
        ok = set_model_version(client, project_id, model_version)
    return {"id": project_id, "model_version_ok": ok}


def set_model_version(client: LabelStudioClient, project_id: int, model_version: str) -> bool:
    """PATCH the project's ``model_version``; False when Label Studio does not know it yet.

    Label Studio accepts only a version that some prediction of the project already has, so
    the submit step calls this again right after its import.
    """
    try:
        client.update_project(project_id, model_version=model_version)
    except LabelStudioError as exc:
        if exc.status == 400 and "model_version" in exc.reason:
            log.info("Project %s: model version %s has no predictions yet; set after import",
                     project_id, model_version)
            return False
        raise
    log.info("Project %s now shows predictions of model %s", project_id, model_version)
    return True
