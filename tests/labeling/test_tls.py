"""A bad TLS certificate fails at once with a clear message; a CA bundle set in the
connection makes it work (issue 13, defect 6: it was retried as a temporary error for the
whole wait)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hitl_plugin.exceptions import LabelStudioError
from hitl_plugin.labeling.client import AsyncLabelStudioClient, LabelStudioClient


def _self_signed(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Whoami(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"id": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # the token refresh of a personal access token
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"access": _jwt("access")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _jwt(kind: str) -> str:
    import base64

    claims = {"token_type": kind, "exp": int(time.time()) + 300, "iat": int(time.time())}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


@pytest.fixture
def https_server(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Whoami)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(cert)
    finally:
        server.shutdown()


def test_an_unknown_certificate_fails_at_once_and_a_ca_bundle_fixes_it(https_server):
    url, ca = https_server
    began = time.monotonic()
    with LabelStudioClient(url, "tok123", retries=5, backoff=1.0) as client:
        with pytest.raises(LabelStudioError, match="ca_bundle") as info:
            client.whoami()
    assert time.monotonic() - began < 1.0  # not five retries with backoff
    assert not info.value.transient
    with LabelStudioClient(url, "tok123", ca_bundle=ca) as client:
        assert client.whoami() == {"id": 1}

    async def both():
        async with AsyncLabelStudioClient(url, "tok123", retries=5, backoff=1.0) as bad:
            with pytest.raises(LabelStudioError, match="ca_bundle") as err:
                await bad.request("GET", "/api/current-user/whoami")
            assert not err.value.transient
        async with AsyncLabelStudioClient(url, "tok123", ca_bundle=ca) as good:
            return await good.request("GET", "/api/current-user/whoami")

    assert asyncio.run(both()) == {"id": 1}


def test_the_ca_bundle_also_verifies_the_token_refresh(https_server):
    url, ca = https_server
    pat = _jwt("refresh")
    with LabelStudioClient(url, pat, retries=5, backoff=1.0) as client:
        with pytest.raises(LabelStudioError, match="ca_bundle") as info:
            client.whoami()
    assert info.value.path == "/api/token/refresh/" and not info.value.transient
    with LabelStudioClient(url, pat, ca_bundle=ca) as client:
        assert client.token_type == "personal" and client.whoami() == {"id": 1}

    async def refreshed():
        async with AsyncLabelStudioClient(url, pat, ca_bundle=ca) as good:
            return await good.request("GET", "/api/current-user/whoami")

    assert asyncio.run(refreshed()) == {"id": 1}


def test_the_wait_ends_at_once_on_a_bad_certificate(https_server):
    from datetime import datetime, timedelta, timezone

    from hitl_plugin.labeling.wait import error_event

    url, _ = https_server
    with LabelStudioClient(url, "tok123") as client:
        with pytest.raises(LabelStudioError) as info:
            client.whoami()
    event = error_event(info.value, conn_id="ls", project_id=1, expected=2,
                        deadline=datetime.now(timezone.utc) + timedelta(hours=72))
    assert event["error_type"] == "config" and "ca_bundle" in event["error"]
