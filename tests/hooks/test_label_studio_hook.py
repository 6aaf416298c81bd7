"""LabelStudioHook: clients from an Airflow Connection, test_connection, no token leaks."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from hitl_plugin.hooks.label_studio import LabelStudioHook
from hitl_plugin.labeling.client import AsyncLabelStudioClient, LabelStudioClient


def _conn(monkeypatch, name: str, **fields) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}",
                       json.dumps({"conn_type": "label_studio", **fields}))
    return name


def test_hook_metadata():
    assert LabelStudioHook.conn_name_attr == "label_studio_conn_id"
    assert LabelStudioHook.default_conn_name == "label_studio_default"
    assert LabelStudioHook.conn_type == "label_studio"
    assert LabelStudioHook.hook_name == "Label Studio"
    from hitl_plugin.provider import get_provider_info

    (ctype,) = get_provider_info()["connection-types"]
    assert ctype["hook-class-name"] == "hitl_plugin.hooks.label_studio.LabelStudioHook"


def test_clients_from_the_connection(stub_ls, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    name = _conn(monkeypatch, "ls_ok", host=stub_ls.url + "/", password=stub_ls.token)
    hook = LabelStudioHook(name)
    client = hook.get_client()
    assert isinstance(client, LabelStudioClient) and client.url == stub_ls.url
    assert hook.test_connection() == (True, "Connected to Label Studio as user 1 (legacy token)")

    async def aclient():
        async with await hook.aget_client() as c:
            return c, await c.count_tasks(1, [])

    aclient_obj, total = asyncio.run(aclient())
    assert isinstance(aclient_obj, AsyncLabelStudioClient) and total == 0
    assert stub_ls.token not in repr(client) + repr(aclient_obj) + caplog.text


def test_host_without_scheme_and_port(monkeypatch, stub_ls):
    port = stub_ls.url.rsplit(":", 1)[1]
    name = _conn(monkeypatch, "ls_parts", host="127.0.0.1", port=int(port),
                 password=stub_ls.token)
    assert LabelStudioHook(name).get_client().url == stub_ls.url


def test_test_connection_reports_a_bad_token_without_it(stub_ls, monkeypatch):
    name = _conn(monkeypatch, "ls_bad", host=stub_ls.url, password="a-wrong-secret-token")
    ok, message = LabelStudioHook(name).test_connection()
    assert not ok and "401" in message and "a-wrong-secret-token" not in message


def test_incomplete_connection(monkeypatch):
    name = _conn(monkeypatch, "ls_nohost", password="x" * 10)
    assert LabelStudioHook(name).test_connection()[0] is False
    with pytest.raises(ValueError, match="no password"):
        LabelStudioHook(_conn(monkeypatch, "ls_notoken", host="http://h")).get_client()


def test_connection_extras_token_type_and_image_url_prefix(stub_ls, monkeypatch):
    pat = stub_ls.enable_pat()
    name = _conn(monkeypatch, "ls_pat", host=stub_ls.url, password=pat,
                 extra={"token_type": "personal",
                        "image_url_prefix": "http://files.local/hitl/images/"})
    hook = LabelStudioHook(name)
    client = hook.get_client()
    assert client.token_type == "personal" and client.conn_id == "ls_pat"
    assert client.image_url_prefix == "http://files.local/hitl/images/"
    assert hook.test_connection() == (True, "Connected to Label Studio as user 1 "
                                            "(personal access token)")

    async def aclient():
        async with await hook.aget_client() as c:
            return c.token_type, c.image_url_prefix, await c.count_tasks(1, [])

    assert asyncio.run(aclient()) == ("personal", "http://files.local/hitl/images/", 0)
    # auto (no extra) tells the PAT apart; the form's prefixed names work too
    auto = _conn(monkeypatch, "ls_auto", host=stub_ls.url, password=pat,
                 extra={"extra__label_studio__image_url_prefix": "/static/images/"})
    client = LabelStudioHook(auto).get_client()
    assert client.token_type == "personal" and client.image_url_prefix == "/static/images/"
    assert LabelStudioHook(_conn(monkeypatch, "ls_leg", host=stub_ls.url,
                                 password=stub_ls.token)).get_client().token_type == "legacy"


@pytest.mark.parametrize("extra, message", [
    ({"token_type": "jwt"},
     "Connection 'ls_bad_extra': extra token_type must be one of legacy, personal, auto; "
     "got 'jwt'"),
    ({"image_url_prefix": "files.local/images/"},
     "Connection 'ls_bad_extra': extra image_url_prefix must be an http(s):// URL"),
    ({"token_type": "personal"}, "Connection 'ls_bad_extra': token_type is 'personal' but"),
])
def test_bad_extras_name_the_connection_and_the_extra(monkeypatch, extra, message):
    name = _conn(monkeypatch, "ls_bad_extra", host="http://127.0.0.1:1",
                 password="legacy-key-123456", extra=extra)
    with pytest.raises(ValueError) as info:
        LabelStudioHook(name).get_client()
    assert message in str(info.value)
    ok, text = LabelStudioHook(name).test_connection()
    assert not ok and message.split(": ", 1)[1][:30] in text and "legacy-key-123456" not in text


def test_a_rejected_personal_token_fails_the_check_clearly(stub_ls, monkeypatch):
    stub_ls.enable_pat()
    stub_ls.fault("GET", "/api/current-user/whoami", status=401, times=5)
    name = _conn(monkeypatch, "ls_pat_denied", host=stub_ls.url, password=stub_ls.state.pat)
    ok, message = LabelStudioHook(name).test_connection()
    assert not ok and "(connection 'ls_pat_denied') rejects the personal access token" in message
    assert stub_ls.state.pat not in message
