"""Ultralytics stays offline: no socket, DNS or pip call across train, val and predict.

The guarded runs happen in a fresh interpreter: the guard is installed before anything
imports Ultralytics, exactly as in an Airflow task process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GUARD = textwrap.dedent(
    r'''
    import json, os, socket, subprocess, sys
    ATTEMPTS = []

    def _record(kind, detail):
        ATTEMPTS.append({"kind": kind, "detail": repr(detail)[:200]})

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return _connect(self, address)
        _record("connect", address)
        raise OSError("network blocked by the test guard")

    def connect_ex(self, address):
        if self.family == socket.AF_UNIX:
            return _connect_ex(self, address)
        _record("connect_ex", address)
        raise OSError("network blocked by the test guard")

    def create_connection(address, *args, **kwargs):
        _record("create_connection", address)
        raise OSError("network blocked by the test guard")

    def getaddrinfo(host, *args, **kwargs):
        _record("getaddrinfo", host)
        raise socket.gaierror("DNS blocked by the test guard")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo

    _popen_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **kw):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if "pip" in text.split() or " pip " in f" {text} " or "-m pip" in text or "uv pip" in text:
            _record("pip", text)
            raise OSError("pip blocked by the test guard")
        return _popen_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = popen_init
    '''
)

WORKLOAD = textwrap.dedent(
    r'''
    import json
    from pathlib import Path
    work = Path(sys.argv[2])
    mode = sys.argv[1]
    if mode == "deliberate":
        import socket
        for call in (lambda: socket.create_connection(("example.com", 80), timeout=2),
                     lambda: socket.getaddrinfo("example.com", 80),
                     lambda: subprocess.run([sys.executable, "-m", "pip", "--version"])):
            try:
                call()
            except OSError:
                pass
    else:
        from hitl_plugin.model.yolo import import_ultralytics
        ultralytics = import_ultralytics()
        from hitl_dev.base_checkpoint import tiny_export
        from hitl_plugin.model.evaluate import evaluate
        from hitl_plugin.model.train import train
        from hitl_plugin.paths import ModelPaths

        data, val_file, _ = tiny_export(work, train=8, val=4, imgsz=64, seed=3)
        # plots on: the font check runs; it must find our local font and not download
        result = train(data, work / "model", epochs=1, imgsz=64, batch=8, plots=True)
        evaluate(Path(result["checkpoint"]), data, val_file, ModelPaths(work / "eval"),
                 imgsz=64)
        model = ultralytics.YOLO(result["checkpoint"])
        # Ultralytics' own save_json path: it would pip install faster-coco-eval
        model.val(data=str(data), imgsz=64, save_json=True, plots=True,
                  project=str(work / "rawval"), name="v", exist_ok=True)
        list(model.predict(str(data.parent / "val" / "images"), imgsz=64, stream=True,
                           save=False, verbose=False))
        from ultralytics.utils.checks import check_font
        check_font("Arial.Unicode.ttf")
    print("ATTEMPTS=" + json.dumps(ATTEMPTS))
    '''
)


def run_guarded(mode: str, work: Path, timeout: int = 400) -> list[dict]:
    script = work / "guarded.py"
    script.write_text(GUARD + WORKLOAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["HITL_HOME"] = str(work / "home")  # a config dir that has never seen a font
    proc = subprocess.run([sys.executable, str(script), mode, str(work)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ATTEMPTS=")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("ATTEMPTS="):])


def test_guard_records_deliberate_network_and_pip(tmp_path):
    """The guard is real: a deliberate connection, DNS lookup and pip run are recorded."""
    attempts = run_guarded("deliberate", tmp_path, timeout=60)
    kinds = [a["kind"] for a in attempts]
    assert kinds == ["create_connection", "getaddrinfo", "pip"], attempts
    assert "example.com" in attempts[0]["detail"]


@pytest.mark.slow
def test_train_val_predict_make_no_network_or_pip_attempt(tmp_path):
    attempts = run_guarded("work", tmp_path)
    assert attempts == []
    fonts = tmp_path / "home" / "ultralytics" / "Ultralytics"
    assert (fonts / "Arial.ttf").stat().st_size > 100_000
    assert (fonts / "Arial.Unicode.ttf").is_file()


def test_ensure_offline_sets_environment_and_fonts(tmp_path, monkeypatch):
    from hitl_plugin.model import yolo as offline

    for key in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(offline, "_done_for", None)
    folder = offline.ensure_offline(tmp_path / "cfg")
    assert folder == tmp_path / "cfg"
    assert os.environ["YOLO_OFFLINE"] == "true"
    assert os.environ["YOLO_AUTOINSTALL"] == "false"
    assert os.environ["YOLO_CONFIG_DIR"] == str(tmp_path / "cfg")
    font = tmp_path / "cfg" / "Ultralytics" / "Arial.ttf"
    first = font.stat().st_mtime_ns
    assert offline.ensure_offline(tmp_path / "cfg") == folder  # idempotent: nothing rewritten
    assert font.stat().st_mtime_ns == first


def test_missing_checkpoint_is_refused_not_downloaded(tmp_path, monkeypatch):
    from hitl_plugin.model.yolo import load_offline_yolo, resolve_weights

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="would try to download"):
        resolve_weights("yolov8n.pt")
    with pytest.raises(FileNotFoundError):
        load_offline_yolo("yolov8n.pt")
    assert not (tmp_path / "yolov8n.pt").exists()
