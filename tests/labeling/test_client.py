"""Client retry rule, typed errors and token hygiene, against a local stub for the faults."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from hitl_plugin.labeling.client import (
    AsyncLabelStudioClient,
    LabelStudioClient,
    LabelStudioError,
    retryable,
    round_counts,
    round_counts_sync,
    run_filters,
)


def test_retry_rule():
    assert retryable("GET", status=500, sent=True)
    assert retryable("POST", status=503, sent=True) and retryable("POST", status=429, sent=True)
    assert not retryable("POST", status=500, sent=True)  # may have been done: re-read first
    assert retryable("POST", status=None, sent=False)  # never reached the server
    assert not retryable("POST", status=None, sent=True)
    assert retryable("GET", status=None, sent=True)
    assert not retryable("GET", status=400, sent=True) and not retryable("GET", status=404,
                                                                         sent=True)


def test_get_is_retried_after_500s_then_succeeds(stub_ls):
    stub_ls.fault("GET", "/api/current-user/whoami", status=500, times=2)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, retries=3, backoff=0.01)
    assert client.whoami()["id"] == 1
    assert stub_ls.count("GET", "/api/current-user/whoami") == 3


def test_retries_are_bounded_and_the_error_is_typed(stub_ls):
    stub_ls.fault("GET", "/api/current-user/whoami", status=502, times=10)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, retries=2, backoff=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.whoami()
    assert info.value.status == 502 and info.value.transient
    assert info.value.path == "/api/current-user/whoami"
    assert stub_ls.count("GET", "/api/current-user/whoami") == 3


def test_a_post_that_may_have_been_done_is_not_resent(stub_ls):
    stub_ls.fault("POST", "/api/projects/1/import", status=500, times=1)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, retries=3, backoff=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.import_tasks(1, [{"data": {"hitl_image_id": 1}}])
    assert info.value.status == 500
    assert stub_ls.count("POST", "/api/projects/1/import") == 1
    stub_ls.fault("POST", "/api/projects/1/import", status=503, times=1)  # not done: resend
    assert client.import_tasks(1, [{"data": {"hitl_image_id": 1}}]) == [1]
    assert stub_ls.count("POST", "/api/projects/1/import") == 3


def test_timeout_and_dropped_connection(stub_ls):
    stub_ls.fault("GET", "/api/current-user/whoami", delay=1.5, times=1)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, timeout=0.3, retries=0)
    began = time.monotonic()
    with pytest.raises(LabelStudioError, match="timed out") as info:
        client.whoami()
    assert info.value.status is None and time.monotonic() - began < 1.4
    stub_ls.fault("POST", "/api/projects/1/import", drop=True, times=1)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, retries=3, backoff=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.import_tasks(1, [{"data": {}}])
    assert info.value.status is None and info.value.sent
    assert stub_ls.count("POST", "/api/projects/1/import") == 1


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LabelStudioClient(f"http://127.0.0.1:{port}", "tok-abcdef", retries=2,
                               backoff=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.import_tasks(1, [])
    assert info.value.status is None and not info.value.sent and info.value.transient


def test_token_never_in_errors_logs_or_repr(stub_ls, caplog):
    caplog.set_level(logging.DEBUG)
    # The stub echoes the Authorization header in its error body, as a careless server might.
    stub_ls.fault("GET", "/api/current-user/whoami", status=500, times=3)
    client = LabelStudioClient(stub_ls.url, stub_ls.token, retries=2, backoff=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.whoami()
    assert "boom" in str(info.value) and "***" in str(info.value)
    wrong = LabelStudioClient(stub_ls.url, "wrong-token-xyz", retries=0)
    with pytest.raises(LabelStudioError) as denied:
        wrong.whoami()
    assert denied.value.status == 401 and not denied.value.transient
    texts = [str(info.value), repr(info.value), str(denied.value), repr(client), str(client),
             caplog.text]
    assert all(stub_ls.token not in t for t in texts)
    assert "wrong-token-xyz" not in caplog.text + str(denied.value) + repr(wrong)
    assert info.value.__cause__ is None


def test_counts_use_server_side_filters(stub_ls):
    stub_ls.add_tasks("d", "r1", range(1, 11), annotated={1, 2, 3}, skipped={4, 5})
    stub_ls.add_tasks("d", "r2", range(1, 4), annotated={1, 2, 3})
    stub_ls.annotate(3, skipped=True)  # annotated and skipped: counts once, as annotated
    client = LabelStudioClient(stub_ls.url, stub_ls.token)
    assert round_counts_sync(client, 1, "d", "r1") == {
        "total": 10, "annotated": 3, "skipped": 2, "completed": 5}

    async def counts():
        async with AsyncLabelStudioClient(stub_ls.url, stub_ls.token) as aclient:
            return await round_counts(aclient, 1, "d", "r2")

    assert asyncio.run(counts())["completed"] == 3
    assert client.count_tasks(1, run_filters("d", "nope")) == 0


def test_async_client_retries_and_scrubs(stub_ls):
    stub_ls.fault("GET", "/api/tasks/", status=503, times=1)
    stub_ls.fault("GET", "/api/current-user/whoami", status=500, times=9)

    async def go():
        async with AsyncLabelStudioClient(stub_ls.url, stub_ls.token, retries=1,
                                          backoff=0.01) as client:
            total = await client.count_tasks(1, [])
            try:
                await client.request("GET", "/api/current-user/whoami")
            except LabelStudioError as exc:
                return total, exc
        return total, None

    total, exc = asyncio.run(go())
    assert total == 0 and exc is not None and exc.status == 500
    assert stub_ls.token not in str(exc)
    assert stub_ls.count("GET", "/api/current-user/whoami") == 2
