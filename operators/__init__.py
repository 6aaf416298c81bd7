"""Thin Airflow operators of airflow-hitl (installed as ``hitl_plugin.operators``).

Classes load lazily on first use, so importing one operator does not import the others.
"""

from __future__ import annotations

import importlib

from hitl_plugin import config as _config


def _variable(key: str) -> str | None:
    from airflow.sdk import Variable

    try:
        return Variable.get(key, default=None)
    except Exception:  # no Airflow context (plain Python use): fall back to the environment
        return None


_config.variable_lookup = _variable

_CLASSES = {
    "PrepareDatasetOperator": "dataset",
    "RoundReportOperator": "dataset",
    "YoloTrainOperator": "model",
    "PromoteModelOperator": "model",
    "ScoreSamplesOperator": "selection",
    "SelectSamplesOperator": "selection",
    "SubmitForLabelingOperator": "labeling",
    "CollectCorrectionsOperator": "labeling",
    "MergeCorrectionsOperator": "merge",
}
__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
