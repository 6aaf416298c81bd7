"""A real Label Studio server, started once per test session.

Use the ``label_studio`` fixture in any test under ``tests/integration/``; every test that uses
it is marked ``integration``. Each test makes its own project with ``new_project``.

The first start of Label Studio on an empty data directory spends ~30 s of two CPUs on database
migrations. So the fixture builds, once per machine, a pristine data directory with a real first
start (migrated database, admin user and token, nothing else), keeps it in the temp folder, and
starts each session's server on a fresh copy of it (~5 s). ``HITL_LS_FRESH=1`` skips the cache
and migrates from scratch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from hitl_dev.labelstudio import LabelStudioServer, LabelStudioServerError, free_port

#: Three classes, as in the synthetic dataset; the project's label config for tests.
LABELS = ("circle", "square", "triangle")


#: Debian's Chromium, driven by Playwright's Python package (no browser is ever downloaded).
CHROMIUM = Path(os.environ.get("HITL_CHROMIUM", "/usr/bin/chromium"))
#: Screenshots the browser tests keep (CI artifacts).
ARTIFACTS = Path(os.environ.get("HITL_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parents[2] / "test-artifacts")
#: Chromium without its calls home (this machine has no network; they would only fail).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the tests of what a person sees."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def label_config(labels: tuple[str, ...] | list[str] = LABELS) -> str:
    """Return the RectangleLabels config our projects use."""
    inner = "".join(f'<Label value="{name}"/>' for name in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<RectangleLabels name="label" toName="image">{inner}</RectangleLabels></View>'
    )


_default_label_config = label_config


@dataclass
class LabelStudioFixture:
    """What the ``label_studio`` fixture yields.

    :ivar url: base URL, e.g. ``http://127.0.0.1:41234``.
    :ivar token: API token (``Authorization: Token <token>``).
    :ivar root: storage root and Label Studio's document root; images go under ``root/images``.
    :ivar data_dir: Label Studio's data directory (database, log, PID file).
    :ivar server: the :class:`LabelStudioServer` itself.
    :ivar start_seconds: how long the fixture took to have the server answer.
    :ivar from_pristine_copy: True when it started on a copy of the cached migrated database.
    """

    url: str
    token: str
    root: Path
    data_dir: Path
    server: LabelStudioServer
    start_seconds: float
    from_pristine_copy: bool = False
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Token {self.token}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API (``path`` starts with ``/api/``), raise on an error status, return JSON."""
        kwargs.setdefault("timeout", 60)
        response = self.session.request(method, f"{self.url}{path}", **kwargs)
        if response.status_code >= 400:
            raise AssertionError(
                f"{method} {path} -> {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    def new_project(self, title: str, label_config: str | None = None) -> int:
        """Create a project (default: RectangleLabels circle/square/triangle); return its id."""
        body = {"title": title[:50], "label_config": label_config or _default_label_config()}
        return int(self.api("POST", "/api/projects", json=body)["id"])

    def add_local_storage(self, project: int, path: Path | None = None) -> int:
        """Register ``path`` (default ``root/images``) as the project's local-files storage."""
        path = path or self.root / "images"
        path.mkdir(parents=True, exist_ok=True)
        body = {"project": project, "path": str(path), "use_blob_urls": True,
                "title": "hitl images", "regex_filter": ""}
        return int(self.api("POST", "/api/storages/localfiles/", json=body)["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Bulk-import tasks; return their ids in order."""
        out = self.api("POST", f"/api/projects/{project}/import",
                       params={"return_task_ids": "true"}, json=tasks)
        return [int(t) for t in out["task_ids"]]

    def tasks(self, project: int) -> list[dict]:
        """Return every task of the project with its annotations (all pages)."""
        found: list[dict] = []
        page = 1
        while True:
            response = self.session.get(
                f"{self.url}/api/tasks/",
                params={"project": project, "page": page, "page_size": 100, "fields": "all"},
                timeout=60,
            )
            if response.status_code == 404:
                return found
            response.raise_for_status()
            data = response.json()
            batch = data.get("tasks", data) if isinstance(data, dict) else data
            if not batch:
                return found
            found.extend(batch)
            page += 1

    def annotations(self, task: int) -> list[dict]:
        """Return all of a task's annotations, skipped ones (``was_cancelled``) included.

        Read from ``GET /api/tasks/{id}``: ``GET /api/tasks/{id}/annotations/`` leaves out
        cancelled annotations.
        """
        return self.api("GET", f"/api/tasks/{task}")["annotations"]


def _pristine_data_dir(executable: Path, probe: LabelStudioServer) -> Path | None:
    """Return a cached, migrated, never-used Label Studio data directory (built on first use)."""
    if os.environ.get("HITL_LS_FRESH"):
        return None
    dist = sorted(p.name for p in executable.resolve().parent.parent.glob(
        "lib/python*/site-packages/label_studio-*.dist-info"))
    key = hashlib.sha256(json.dumps(
        [str(executable.resolve()), dist, probe.username, probe.password, probe.token]
    ).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"hitl-labelstudio-pristine-{os.getuid()}-{key}"
    ready = cache / "READY"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{cache}.lock", "w") as lock:  # other sessions may build it at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return cache / "data"
        shutil.rmtree(cache, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix="hitl-labelstudio-build-"))
        server = LabelStudioServer(data_dir=build / "data", document_root=build / "root",
                                   port=free_port(), username=probe.username,
                                   password=probe.password, token=probe.token)
        watchdog = server.stop_with_process()
        try:
            server.start(timeout=240)
        finally:
            server.stop()
            watchdog.kill()
            watchdog.wait(timeout=10)
        cache.mkdir()
        shutil.copytree(build / "data", cache / "data",
                        ignore=shutil.ignore_patterns("labelstudio.pid", "labelstudio.log"))
        shutil.rmtree(build, ignore_errors=True)
        ready.write_text(json.dumps({"built": time.time(), "label_studio": dist}))
        return cache / "data"


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """Start a fresh Label Studio on a free port for the whole session; stop it at the end.

    Fails (never skips) when Label Studio is not installed: a skipped integration test must not
    pass as green.
    """
    base = tmp_path_factory.mktemp("labelstudio")
    root = base / "storage"
    (root / "images").mkdir(parents=True)
    probe = LabelStudioServer(data_dir=base / "data", document_root=root, port=1)
    if not probe.executable.exists():
        pytest.fail(
            f"Label Studio is not installed: {probe.executable} is missing. Run `make setup` "
            f"(it installs Label Studio into .venv-labelstudio) or set HITL_LABEL_STUDIO_BIN.",
            pytrace=False,
        )
    began = time.monotonic()
    try:
        pristine = _pristine_data_dir(probe.executable, probe)
    except LabelStudioServerError as exc:
        pytest.fail(f"Label Studio did not start: {exc}", pytrace=False)
    if pristine is not None:
        shutil.copytree(pristine, base / "data")
    server = None
    for attempt in range(3):  # a free port can be taken between the probe and the bind
        server = LabelStudioServer(data_dir=base / "data", document_root=root, port=free_port())
        try:
            server.start(timeout=240)
            break
        except LabelStudioServerError as exc:
            if "already in use" not in str(exc) or attempt == 2:
                hint = (f"\n(It started on a copy of the cached pristine data dir {pristine}: "
                        f"delete that folder or set HITL_LS_FRESH=1 to rebuild it.)"
                        if pristine is not None else "")
                pytest.fail(f"Label Studio did not start: {exc}{hint}", pytrace=False)
    assert server is not None
    # Even if this test run is killed (timeout, SIGKILL), the server does not outlive it.
    watchdog = server.stop_with_process()
    fixture = LabelStudioFixture(
        url=server.url, token=server.token, root=root, data_dir=server.data_dir, server=server,
        start_seconds=time.monotonic() - began, from_pristine_copy=pristine is not None,
    )
    try:
        yield fixture
    finally:
        fixture.session.close()
        server.stop()
        watchdog.kill()
        watchdog.wait(timeout=10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the real Label Studio as ``integration``."""
    for item in items:
        if "label_studio" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)

