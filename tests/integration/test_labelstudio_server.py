"""The local Label Studio server: start, status, port checks, restart, stop (real server)."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
import requests

from hitl_dev import labelstudio as server_mod
from hitl_dev.labelstudio import LabelStudioServer, LabelStudioServerError, free_port

pytestmark = pytest.mark.integration


def test_fixture_server_runs_on_loopback_without_network(label_studio):
    status = label_studio.server.status()
    assert status["running"] and status["api"] and status["api_status"] == 200
    assert status["url"] == label_studio.url
    assert isinstance(status["pid"], int)
    log_text = label_studio.server.log_file.read_text()
    assert f"Starting development server at {label_studio.url}/" in log_text
    # Analytics, Sentry and the version check are off: nothing in the log about the network.
    assert label_studio.server.network_attempts() == []
    # The admin can log in with the printed credentials (the UI's login form).
    session = requests.Session()
    page = session.get(f"{label_studio.url}/user/login/", timeout=30)
    assert page.status_code == 200
    response = session.post(
        f"{label_studio.url}/user/login/", timeout=30, allow_redirects=False,
        data={"email": label_studio.server.username, "password": label_studio.server.password,
              "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
        headers={"Referer": f"{label_studio.url}/user/login/"},
    )
    assert response.status_code == 302, response.text[:300]
    assert session.get(f"{label_studio.url}/api/current-user/whoami", timeout=30).json()[
        "email"] == label_studio.server.username
    # Without the token the API refuses.
    assert requests.get(f"{label_studio.url}/api/projects", timeout=30).status_code == 401


def test_local_files_are_served_from_the_storage_root(label_studio):
    from PIL import Image

    project = label_studio.new_project("local files")
    label_studio.add_local_storage(project)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(label_studio.root / "images" / "served.png")
    response = label_studio.session.get(
        f"{label_studio.url}/data/local-files/", params={"d": "images/served.png"}, timeout=30)
    assert response.status_code == 200
    assert response.content == (label_studio.root / "images" / "served.png").read_bytes()
    missing = label_studio.session.get(
        f"{label_studio.url}/data/local-files/", params={"d": "images/nope.png"}, timeout=30)
    assert missing.status_code == 404


def test_port_taken_fails_clearly_and_starts_nothing(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LabelStudioServer(data_dir=tmp_path / "ls", document_root=tmp_path, port=port)
        assert server.executable.exists(), "Label Studio is not installed: run `make setup`"
        with pytest.raises(LabelStudioServerError, match=f"port {port} is already in use"):
            server.start(timeout=30)
    assert not server.pid_file.exists()
    assert server.status()["running"] is False


def test_port_taken_on_all_interfaces_is_seen_too(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert server_mod.port_in_use("127.0.0.1", port)
    assert not server_mod.port_in_use("127.0.0.1", port)


def test_missing_executable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HITL_LABEL_STUDIO_BIN", str(tmp_path / "no-such" / "label-studio"))
    server = LabelStudioServer(data_dir=tmp_path / "ls", document_root=tmp_path,
                               port=free_port())
    with pytest.raises(LabelStudioServerError, match="executable not found.*make setup"):
        server.start(timeout=10)


def test_cli_reports_the_running_server(label_studio, capsys):
    argv = ["--data-dir", str(label_studio.data_dir), "--root", str(label_studio.root)]
    assert server_mod.main(["status", *argv]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] and status["api"] and status["url"] == label_studio.url
    # start on a running server is a no-op that says so (and prints where to log in).
    pid = label_studio.server.pid()
    assert server_mod.main(["start", *argv]) == 0
    out = capsys.readouterr().out
    assert "already running" in out and label_studio.url in out
    assert label_studio.server.password in out
    assert label_studio.server.pid() == pid
    # Another port from the same data directory is refused, not silently ignored.
    assert server_mod.main(["start", "--port", str(free_port()), *argv]) == 1
    assert "already runs on port" in capsys.readouterr().err


def test_restart_keeps_data_and_token_and_a_wrong_token_is_reported(label_studio, capsys):
    server = label_studio.server
    project = label_studio.new_project("survives restart")
    pid = server.pid()

    try:
        assert server.stop() is True
        stopped = server.status()
        assert (stopped["running"], stopped["pid"], stopped["api"]) == (False, None, False)
        assert not server.pid_file.exists()
        assert not server_mod.pid_alive(pid)
        assert server.stop() is False  # idempotent

        # Another token against a database created with ours: a clear error, no orphan process.
        wrong = LabelStudioServer(data_dir=server.data_dir, document_root=server.document_root,
                                  port=server.port, token="some-other-token")
        with pytest.raises(LabelStudioServerError, match="rejects the API token"):
            wrong.start(timeout=120)
        assert wrong.pid() is None and not wrong.pid_file.exists()

        began = time.monotonic()
        server.start(timeout=120)
        restart_s = time.monotonic() - began
    finally:
        server.start(timeout=120)  # a no-op when running; the session's other tests need it
    with capsys.disabled():
        print(f"\n[labelstudio] restart took {restart_s:.1f} s (fixture start "
              f"{label_studio.start_seconds:.1f} s, pristine copy: "
              f"{label_studio.from_pristine_copy})")
    assert server.status()["api"]
    titles = {p["id"]: p["title"] for p in label_studio.api("GET", "/api/projects")["results"]}
    assert titles[project] == "survives restart"
    assert restart_s < 60


def test_watchdog_stops_the_server_when_its_owner_is_killed(tmp_path):
    # A stand-in for the server process (its command line names Label Studio, as the real
    # one's does), and an owner process that is killed with SIGKILL: no finalizer runs.
    fake = subprocess.Popen(["bash", "-c", "exec -a label-studio-standin sleep 300"],
                            start_new_session=True)
    owner = subprocess.Popen(["sleep", "300"])
    server = LabelStudioServer(data_dir=tmp_path, document_root=tmp_path, port=free_port())
    server.pid_file.write_text(json.dumps({"pid": fake.pid, "port": server.port}))
    watchdog = server.stop_with_process(owner.pid)
    try:
        time.sleep(1.5)
        assert fake.poll() is None  # the owner lives: the server stays
        owner.kill()
        owner.wait()
        fake.wait(timeout=15)
        watchdog.wait(timeout=15)
        assert not server.pid_file.exists()
    finally:
        for process in (fake, owner, watchdog):
            if process.poll() is None:
                process.kill()
                process.wait()
