"""The hostname a task try records (``[core] hostname_callable``) names its worker."""

from __future__ import annotations

import socket

from hitl_plugin.hostname import hostname


def test_a_named_worker_records_its_name_else_the_machine(monkeypatch):
    monkeypatch.setenv("HITL_WORKER_HOSTNAME", "worker-gpu-2")
    assert hostname() == "worker-gpu-2"
    monkeypatch.delenv("HITL_WORKER_HOSTNAME")
    assert hostname() == socket.getfqdn()
