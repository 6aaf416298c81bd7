"""One Label Studio project per pipeline: found by title, created once, kept up to date."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from html import unescape
from pathlib import Path

from hitl_plugin.exceptions import LabelStudioError
from hitl_plugin.labeling.client import LabelStudioClient
from hitl_plugin.labeling.tasks import INSTRUCTIONS, label_config
from hitl_plugin.locks import file_lock
from hitl_plugin.paths import RoundPaths, safe_component

log = logging.getLogger(__name__)

_LABEL = re.compile(r"<Label\b[^>]*\bvalue=(\"[^\"]*\"|'[^']*')")
STORAGE_TITLE = "hitl images"
#: Project settings of the review: the instructions before labeling, the current labels as
#: the editable starting annotation (``show_collab_predictions``), Skip offered.
PROJECT_SETTINGS = {"expert_instruction": INSTRUCTIONS, "show_instruction": True,
                    "show_collab_predictions": True, "show_skip_button": True}


def config_labels(config: str) -> set[str]:
    """The ``<Label value=...>`` values of a label config."""
    return {unescape(m.group(1)[1:-1]) for m in _LABEL.finditer(config or "")}


def ensure_project_info(client: LabelStudioClient, *, title: str, class_names: list[str],
                        images_root: Path, model_version: str,
                        paths: RoundPaths | None = None,
                        image_url_prefix: str | None = None) -> dict:
    """Find or create the project titled ``title`` and bring it up to date.

    :return: ``{"id": project id, "model_version_ok": whether the project shows
        ``model_version`` already}`` (False: set it after the import, see
        :func:`set_model_version`).

    - creates it with a RectangleLabels config listing ``class_names`` when no project has the
      title (the lowest id wins if several do); adds missing classes to an existing config;
    - registers the local-files storage for ``images_root`` once (never synced: our tasks
      point at the files themselves); not with ``image_url_prefix`` (the connection's extra:
      a Label Studio that reads the images from that URL, not from the storage root);
    - PATCHes the project's ``model_version`` when it differs, so that annotators see this
      round's predictions.

    Parallel submit tasks (mapped batches) set up one at a time, under a lock in the round
    folder (``paths``; without it, in the temporary folder). Two tasks creating the project
    at once on machines that do not share that folder both end up on the lowest id; the
    extra empty project is deleted.

    With ``paths``, a setup that left the project complete is remembered in the round
    folder, and the round's other batches reuse it without asking the service again (the
    mapped submit tasks of one round share the project).
    """
    if not class_names:
        raise ValueError("ensure_project needs at least one class name")
    path = str(Path(images_root).absolute())
    want = {"title": title, "classes": sorted(class_names), "images_root": path,
            "model_version": model_version, "url": client.url}
    if image_url_prefix:
        want["image_url_prefix"] = image_url_prefix
    if paths is not None:
        memo, lock = paths.project_memo(title), paths.project_lock(title)
    else:
        memo = None
        lock = Path(tempfile.gettempdir()) / f".ls-project-{safe_component(title)[:100]}.lock"
    with file_lock(lock, what=f"setting up the Label Studio project {title!r}"):
        if memo is not None and memo.is_file():
            try:
                known = json.loads(memo.read_text())
            except ValueError:
                known = {}
            if known.get("setup") == want:
                return {"id": int(known["id"]), "model_version_ok": True}
        info = _ensure_project(client, title=title, class_names=class_names,
                               path=None if image_url_prefix else path,
                               model_version=model_version)
        if memo is not None and info["model_version_ok"]:
            memo.write_text(json.dumps({"setup": want, "id": info["id"]}))
        return info


def _ensure_project(client: LabelStudioClient, *, title: str, class_names: list[str],
                    path: str | None, model_version: str) -> dict:
    """:param path: the images folder to register as local-files storage (None: none)."""
    project = client.find_project(title)
    if project is None:
        created = client.create_project(title, label_config(class_names),
                                        model_version=model_version, **PROJECT_SETTINGS)
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
    have = config_labels(project.get("label_config"))
    # Our classes first (their colours and keys stay put), then any the project has besides.
    wanted = label_config(list(class_names) + sorted(have - set(class_names)))
    if project.get("label_config") != wanted:
        log.info("Project %s: label config set to this version's view (classes %s)",
                 project_id, [n for n in class_names if n not in have] or "unchanged")
        client.update_project(project_id, label_config=wanted)
    if any(project.get(k) != v for k, v in PROJECT_SETTINGS.items()):
        client.update_project(project_id, **PROJECT_SETTINGS)
    if path is not None and not any(str(s.get("path", "")).rstrip(os.sep) == path.rstrip(os.sep)
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
