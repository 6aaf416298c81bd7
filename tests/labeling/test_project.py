"""Project setup is remembered per round folder; a changed setup asks the service again."""

from __future__ import annotations

import pytest

from hitl_plugin.labeling.project import ensure_project_info
from hitl_plugin.paths import RoundPaths


class _Client:
    """Answers like a project that is already set up (a test double of our client)."""

    url = "http://127.0.0.1:1"

    def __init__(self, images_root) -> None:
        self.calls = 0
        self.root = str(images_root)

    def find_project(self, title):
        from hitl_plugin.labeling.project import PROJECT_SETTINGS
        from hitl_plugin.labeling.tasks import label_config

        self.calls += 1
        return {"id": 7, "label_config": label_config(["a", "b"]), "model_version": "m1",
                **PROJECT_SETTINGS}

    def local_storages(self, project_id):
        self.calls += 1
        return [{"path": self.root}]


class _Offline:
    url = "http://127.0.0.1:1"

    def __getattr__(self, name):
        raise AssertionError(f"the service was asked again ({name})")


def test_setup_is_reused_within_a_round_and_redone_when_it_changes(tmp_path):
    args = dict(title="hitl-x", class_names=["a", "b"], images_root=tmp_path / "images",
                model_version="m1",
                paths=RoundPaths(tmp_path / "round", tmp_path / "models"))
    client = _Client(tmp_path / "images")
    assert ensure_project_info(client, **args) == {"id": 7, "model_version_ok": True}
    assert client.calls == 2
    assert ensure_project_info(_Offline(), **args) == {"id": 7, "model_version_ok": True}
    with pytest.raises(AssertionError, match="asked again"):
        ensure_project_info(_Offline(), **{**args, "model_version": "m2"})


def test_an_image_url_prefix_registers_no_local_files_storage(tmp_path):
    class _Remote(_Client):
        def local_storages(self, project_id):
            raise AssertionError("a Label Studio reading images from a URL needs no storage")

    client = _Remote(tmp_path / "images")
    info = ensure_project_info(client, title="hitl-x", class_names=["a", "b"],
                               images_root=tmp_path / "images", model_version="m1",
                               image_url_prefix="http://files.local/images/")
    assert info == {"id": 7, "model_version_ok": True} and client.calls == 1
    assert not (tmp_path / "images").exists()
