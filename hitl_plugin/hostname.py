"""The hostname a task try records: ``[core] hostname_callable = hitl_plugin.hostname.hostname``.

A worker started with ``HITL_WORKER_HOSTNAME`` (each worker of ``docker-compose.yaml`` and of
the native distributed stack) records that name, so that a round's report says which worker
ran each task even when several workers share one machine; otherwise the machine's name.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``HITL_WORKER_HOSTNAME``, else the machine's fully qualified name."""
    return os.environ.get("HITL_WORKER_HOSTNAME") or socket.getfqdn()
