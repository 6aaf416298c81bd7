"""``hitl stack stop`` signals only what its PID files really name (issue 13, defect 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from hitl_dev.stack import is_our_airflow, stop_pid_file


def test_a_stale_pid_file_signals_nothing(tmp_path):
    # a process that is not Airflow, leading its own group (as a stale pid could now be)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        for pid in (0, 1, os.getpid(), other.pid, 999_999_999):
            pid_file = tmp_path / "x.pid"
            pid_file.write_text(str(pid))
            assert stop_pid_file(pid_file, grace=0.1) is False
            assert not pid_file.exists()
        time.sleep(0.2)
        assert other.poll() is None  # still running: never signalled
        assert not is_our_airflow(other.pid)
    finally:
        other.kill()
        other.wait()


def test_an_airflow_component_is_stopped(tmp_path):
    fake = tmp_path / "bin" / "airflow"  # a stand-in with the component's name
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([str(fake), "scheduler"], start_new_session=True)
    try:
        time.sleep(0.3)
        assert is_our_airflow(proc.pid)
        pid_file = tmp_path / "scheduler.pid"
        pid_file.write_text(str(proc.pid))
        assert stop_pid_file(pid_file, grace=5) is True
        assert proc.wait(timeout=10) is not None and not pid_file.exists()
    finally:
        proc.kill()
