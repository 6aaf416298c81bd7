"""The deferrable sensor of airflow-hitl (installed as ``hitl_plugin.sensors``)."""

from __future__ import annotations

import importlib

__all__ = ["LabelsReadySensor"]


def __getattr__(name: str):
    if name == "LabelsReadySensor":
        return importlib.import_module(f"{__name__}.label_studio").LabelsReadySensor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
