"""An existing Label Studio (issue 15, point 2) against the REAL server, set up like one of
a user's own: personal access tokens enabled in its organisation, a PAT made through the real
API, the clients (sync and async) exchanging and renewing it, and images read from a static
server through the connection's ``image_url_prefix`` instead of local-files storage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import requests

from hitl_dev.labelstudio import StaticFiles, new_personal_token, token_settings
from hitl_plugin.exceptions import LabelStudioAuthError
from hitl_plugin.hooks.label_studio import LabelStudioHook
from hitl_plugin.labeling.client import AsyncLabelStudioClient, LabelStudioClient
from hitl_plugin.labeling.project import ensure_project_info
from hitl_plugin.labeling.tasks import image_url

#: A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture(scope="module")
def pat(label_studio):
    """A personal access token of the admin, made as a user makes one (PATs on for the
    organisation; legacy tokens stay on for the other tests of the session)."""
    settings = token_settings(label_studio.url, label_studio.headers, api_tokens_enabled=True)
    assert settings["api_tokens_enabled"] is True
    token = new_personal_token(label_studio.url, label_studio.headers)
    yield token
    for listed in label_studio.api("GET", "/api/token/") or []:  # revoke it
        label_studio.api("POST", "/api/token/blacklist/", json={"refresh": listed["token"]})


def _stale(client) -> None:
    """Make the client hold an access token the server refuses (it thinks it still valid)."""
    client._access = client._access.rsplit(".", 1)[0] + ".forged-signature-forged-signature"
    client._access_until = time.time() + 3600


def test_personal_token_sync_client_auto_and_personal(label_studio, pat):
    admin = label_studio.api("GET", "/api/current-user/whoami")["id"]
    for token_type in ("personal", "auto"):
        with LabelStudioClient(label_studio.url, pat, token_type=token_type,
                               retries=0) as client:
            assert client.token_type == "personal"
            assert client.whoami()["id"] == admin
            first = client._access
            assert first and first != pat
            client._access_until = 0.0  # expired: the next call asks for a new one first
            assert client.whoami()["id"] == admin and client._access != first
            _stale(client)  # a 401: one new access token, one more try
            assert client.whoami()["id"] == admin
            assert client._access.rsplit(".", 1)[1] != "forged-signature-forged-signature"


def test_personal_token_async_client_with_a_real_refresh(label_studio, pat):
    async def go():
        async with AsyncLabelStudioClient(label_studio.url, pat, retries=0) as client:
            body = await client.request("GET", "/api/current-user/whoami")
            first = client._access
            client._access_until = 0.0
            await client.request("GET", "/api/current-user/whoami")
            second = client._access
            _stale(client)
            await client.request("GET", "/api/projects/", params={"page_size": 1})
            return body, first, second, client._access

    body, first, second, third = asyncio.run(go())
    assert body["id"] >= 1 and len({first, second, third}) == 3


def test_wrong_token_types_are_configuration_errors(label_studio, pat):
    with LabelStudioClient(label_studio.url, pat, token_type="legacy", retries=0,
                           conn_id="ls_mine") as client:
        with pytest.raises(LabelStudioAuthError, match="looks like a personal access") as info:
            client.whoami()
    assert "(connection 'ls_mine')" in str(info.value) and pat not in str(info.value)
    forged = pat.rsplit(".", 1)[0] + ".forged-signature-forged-signature"
    with LabelStudioClient(label_studio.url, forged, retries=0) as client:
        with pytest.raises(LabelStudioAuthError, match="refuses to exchange") as info:
            client.whoami()
    assert info.value.path == "/api/token/refresh/" and forged not in str(info.value)


def test_images_through_a_prefix_without_local_files_storage(label_studio, pat, tmp_path,
                                                             monkeypatch):
    images = tmp_path / "images"
    (images / "it").mkdir(parents=True)
    (images / "it" / "a b.png").write_bytes(PNG)
    with StaticFiles(images) as files:
        prefix = files.url + "/"
        monkeypatch.setenv("AIRFLOW_CONN_LS_MINE", json.dumps({
            "conn_type": "label_studio", "host": label_studio.url, "password": pat,
            "extra": {"token_type": "personal", "image_url_prefix": prefix}}))
        hook = LabelStudioHook("ls_mine")
        assert hook.test_connection() == (
            True, f"Connected to Label Studio as user "
                  f"{label_studio.api('GET', '/api/current-user/whoami')['id']} "
                  f"(personal access token)")
        with hook.get_client() as client:
            info = ensure_project_info(client, title=f"own-ls-{time.time_ns()}",
                                       class_names=["circle"], images_root=Path(images),
                                       model_version="m1",
                                       image_url_prefix=client.image_url_prefix)
            pid = info["id"]
            try:
                assert client.local_storages(pid) == []
                url = image_url("it/a b.png", client.image_url_prefix)
                (task_id,) = client.import_tasks(pid, [{"data": {"image": url}}])
                task = client.request("GET", f"/api/tasks/{task_id}/")
                assert task["data"]["image"] == url == prefix + "it/a%20b.png"
                # what the labeling view does: an XMLHttpRequest from Label Studio's origin
                got = requests.get(task["data"]["image"], headers={"Origin": label_studio.url},
                                   timeout=10)
                assert got.status_code == 200 and got.content == PNG
                assert got.headers["Access-Control-Allow-Origin"] == "*"
            finally:
                client.request("DELETE", f"/api/projects/{pid}/")
