"""Airflow DAG file: one human-in-the-loop training DAG per YAML file in ``dags/configs/``.

Kept free of heavy imports: torch, ultralytics and pycocotools load inside tasks only.
"""

from __future__ import annotations

from pathlib import Path

from hitl_plugin.dag_factory import build_dags

globals().update(build_dags(Path(__file__).parent / "configs"))
