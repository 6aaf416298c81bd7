"""Session-wide settings: Airflow never touches ~/airflow during the tests."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Airflow: its home and config are read at import time.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hitl-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("HITL_HOME", tempfile.mkdtemp(prefix="hitl-tests-home-"))
