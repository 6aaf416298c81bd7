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


# -- personal access tokens -----------------------------------------------------------------

def _stub_module(stub):
    import sys

    return sys.modules[type(stub).__module__]


def _bearer_calls(stub, path: str) -> list[str]:
    return [h.get("Authorization", "") for m, p, h in stub.state.requests if p == path]


def test_token_type_detection(stub_ls):
    from hitl_plugin.labeling.client import jwt_claims, token_kind

    pat = stub_ls.enable_pat()
    access = _stub_module(stub_ls).make_jwt({"token_type": "access", "exp": 1})
    assert jwt_claims(pat)["token_type"] == "refresh"
    assert jwt_claims("hitl0demo0token") is None and jwt_claims("a.b.c") is None
    assert token_kind(pat) == "personal" and token_kind(pat, "personal") == "personal"
    assert token_kind("0123456789abcdef0123456789abcdef01234567") == "legacy"
    assert token_kind(access) == "legacy"  # an access token is not what the password holds
    assert token_kind(pat, "legacy") == "legacy"  # what was asked
    with pytest.raises(ValueError, match="not a personal access token"):
        token_kind("0123456789abcdef", "personal")
    with pytest.raises(ValueError, match="token_type must be one of legacy, personal, auto"):
        token_kind(pat, "jwt")
    with pytest.raises(ValueError, match="Connection 'ls_x': token_type is 'personal'"):
        LabelStudioClient(stub_ls.url, "legacy-key-123", token_type="personal", conn_id="ls_x")


def test_access_expiry_is_read_from_the_token(stub_ls):
    from hitl_plugin.labeling.client import access_expiry

    make_jwt = _stub_module(stub_ls).make_jwt
    # Label Studio's five minutes: renewed 30 s early; a short-lived one a quarter early.
    assert access_expiry(make_jwt({"exp": 1300, "iat": 1000}), now=1000) == 1270
    assert access_expiry(make_jwt({"exp": 1040, "iat": 1000}), now=1000) == 1030
    assert access_expiry(make_jwt({"exp": 1040}), now=1000) == 1030
    assert access_expiry(make_jwt({"iat": 1000}), now=1000) == float("inf")  # a 401 renews
    assert access_expiry("not-a-jwt", now=1000) == float("inf")


def test_personal_token_is_exchanged_once_and_renewed_when_due(stub_ls):
    pat = stub_ls.enable_pat()
    client = LabelStudioClient(stub_ls.url, pat, retries=0)
    assert client.token_type == "personal"
    assert client.whoami()["id"] == 1 and client.whoami()["id"] == 1
    assert stub_ls.count("POST", "/api/token/refresh/") == 1  # one access token, used twice
    (refresh_auth,) = _bearer_calls(stub_ls, "/api/token/refresh/")
    assert refresh_auth == ""  # the refresh call carries the PAT in its body only
    first, second = _bearer_calls(stub_ls, "/api/current-user/whoami")
    assert first == second and first.startswith("Bearer ") and pat not in first
    client._access_until = time.time() - 1  # what its exp says a little before it expires
    assert client.whoami()["id"] == 1
    assert stub_ls.count("POST", "/api/token/refresh/") == 2
    assert _bearer_calls(stub_ls, "/api/current-user/whoami")[-1] != first


def test_one_401_gets_a_new_access_token_and_one_more_try(stub_ls, caplog):
    caplog.set_level(logging.DEBUG)
    pat = stub_ls.enable_pat()
    client = LabelStudioClient(stub_ls.url, pat, retries=0)
    assert client.whoami()["id"] == 1
    stub_ls.revoke_access()  # the server no longer takes the access token the client holds
    assert client.whoami()["id"] == 1
    assert stub_ls.count("GET", "/api/current-user/whoami") == 3
    assert stub_ls.count("POST", "/api/token/refresh/") == 2
    assert "trying once more" in caplog.text and pat not in caplog.text


def test_a_401_that_stays_is_a_configuration_error_without_the_tokens(stub_ls, caplog):
    from hitl_plugin.exceptions import LabelStudioAuthError

    caplog.set_level(logging.DEBUG)
    pat = stub_ls.enable_pat()
    # The stub echoes the Authorization header (the access token) in its 401 body.
    stub_ls.fault("GET", "/api/current-user/whoami", status=401, times=5)
    client = LabelStudioClient(stub_ls.url, pat, retries=3, backoff=0.01, conn_id="ls_pat")
    with pytest.raises(LabelStudioAuthError) as info:
        client.whoami()
    text = str(info.value)
    assert info.value.status == 401 and not info.value.transient
    assert f"the server at {stub_ls.url} (connection 'ls_pat') rejects" in text
    assert "personal access token" in text and "Personal Access Token" in text
    assert "API Tokens Settings" in text
    assert stub_ls.count("GET", "/api/current-user/whoami") == 2  # 401s are not retried
    assert stub_ls.count("POST", "/api/token/refresh/") == 2  # one renewal
    accesses = {h.removeprefix("Bearer ") for h in
                _bearer_calls(stub_ls, "/api/current-user/whoami")}
    for secret in (pat, *accesses):
        assert secret not in text + repr(info.value) + caplog.text + repr(client)
    assert "Bearer ***" in text


def test_legacy_token_refused_says_what_to_check(stub_ls):
    from hitl_plugin.exceptions import LabelStudioAuthError

    client = LabelStudioClient(stub_ls.url, "a-wrong-legacy-token", retries=2, backoff=0.01)
    with pytest.raises(LabelStudioAuthError, match=r"legacy API token \(token_type auto") as info:
        client.whoami()
    assert "Legacy Tokens" in str(info.value) and "token_type 'personal'" in str(info.value)
    assert stub_ls.count("GET", "/api/current-user/whoami") == 1
    assert stub_ls.count("POST", "/api/token/refresh/") == 0
    assert "a-wrong-legacy-token" not in str(info.value)
    pat = stub_ls.enable_pat()
    as_legacy = LabelStudioClient(stub_ls.url, pat, token_type="legacy", retries=0)
    with pytest.raises(LabelStudioAuthError, match="looks like a personal access token") as info:
        as_legacy.whoami()
    assert pat not in str(info.value)


def test_a_refused_personal_token_is_a_configuration_error(stub_ls):
    from hitl_plugin.exceptions import LabelStudioAuthError

    stub_ls.enable_pat()
    other = _stub_module(stub_ls).personal_token()  # revoked, or from another server
    stub_ls.fault("POST", "/api/token/refresh/", status=503, times=1)  # retried: harmless
    client = LabelStudioClient(stub_ls.url, other, retries=2, backoff=0.01, conn_id="ls_old")
    with pytest.raises(LabelStudioAuthError, match="refuses to exchange the personal") as info:
        client.whoami()
    assert info.value.path == "/api/token/refresh/" and not info.value.transient
    assert "(connection 'ls_old')" in str(info.value) and other not in str(info.value)
    assert stub_ls.count("POST", "/api/token/refresh/") == 2
    assert stub_ls.count("GET", "/api/current-user/whoami") == 0


def test_async_client_with_a_personal_token(stub_ls):
    from hitl_plugin.exceptions import LabelStudioAuthError

    pat = stub_ls.enable_pat()
    stub_ls.add_tasks("d", "r", range(1, 4), annotated={1})

    async def go():
        async with AsyncLabelStudioClient(stub_ls.url, pat, retries=0) as client:
            first = await round_counts(client, 1, "d", "r")
            stub_ls.revoke_access()
            again = await round_counts(client, 1, "d", "r")
            client._access_until = 0.0  # due
            await client.count_tasks(1, [])
            stub_ls.fault("GET", "/api/tasks/", status=401, times=2)
            try:
                await client.count_tasks(1, [])
            except LabelStudioAuthError as exc:
                return first, again, exc
        return first, again, None

    first, again, exc = asyncio.run(go())
    assert first == again and first["annotated"] == 1
    assert stub_ls.count("POST", "/api/token/refresh/") == 4  # first, 401, due, 401
    assert exc is not None and "personal access token" in str(exc)
    assert pat not in str(exc) and "Bearer ***" in str(exc)


def test_scrub_removes_tokens_and_bare_jwt_signatures(stub_ls):
    from hitl_plugin.labeling.client import scrub

    pat = stub_ls.enable_pat()
    signature = pat.rsplit(".", 1)[1]
    text = scrub(f"full {pat} sig {signature} other xyz", pat, None, "xyz")
    assert pat not in text and signature not in text and "xyz" not in text
