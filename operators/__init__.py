"""Thin Airflow operators of airflow-hitl (installed as ``hitl_plugin.operators``).

Each renders its arguments, calls one step of :mod:`hitl_plugin.steps`, and returns the
step's typed result. Classes load lazily on first use, so importing one operator does not
import the others.
"""

from __future__ import annotations

import importlib

_CLASSES = {
    "HitlOperator": "base",
    "PrepareDatasetOperator": "dataset",
    "RoundReportOperator": "dataset",
    "YoloTrainOperator": "model",
    "PromoteModelOperator": "model",
    "CheckpointApprovalOperator": "approval",
    "ScoreSamplesOperator": "selection",
    "SelectSamplesOperator": "selection",
    "DetectDriftOperator": "selection",
    "DriftEventOperator": "selection",
    "SubmitForLabelingOperator": "labeling",
    "CollectCorrectionsOperator": "labeling",
    "MergeCorrectionsOperator": "merge",
}
__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
