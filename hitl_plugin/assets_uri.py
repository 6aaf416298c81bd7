"""The Airflow Asset that stands for a dataset: one per dataset name.

The URI scheme ``hitl://`` needs no provider: Airflow 3.3 accepts an Asset URI with any
scheme that is not ``airflow`` and that no provider claims (checked against the installed
version: no warning, no normalization). Consumers schedule on it; the merge step emits an
event on it with ``extra = {"version", "parent", "round"}``. A second Asset per dataset,
``hitl://drift/<name>``, gets an event when the drift step detects drift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import Asset

SCHEME = "hitl"


def dataset_asset_uri(name: str) -> str:
    """The Asset URI of a dataset, ``hitl://datasets/<name>``."""
    return f"{SCHEME}://datasets/{name}"


def dataset_asset_name(name: str) -> str:
    """The Asset name of a dataset, ``hitl-dataset-<name>``."""
    return f"hitl-dataset-{name}"


def drift_asset_uri(name: str) -> str:
    """The Asset URI of a dataset's drift detections, ``hitl://drift/<name>``."""
    return f"{SCHEME}://drift/{name}"


def drift_asset_name(name: str) -> str:
    """The Asset name of a dataset's drift detections, ``hitl-drift-<name>``."""
    return f"hitl-drift-{name}"


def drift_asset(name: str) -> Asset:
    """The Asset the drift step emits an event on when it detects drift in ``name``'s pool
    (``extra``: the round, the verdict's reason and the p-values). Pipelines schedule on it
    only with ``schedule.on_drift: true``."""
    from airflow.sdk import Asset

    return Asset(name=drift_asset_name(name), uri=drift_asset_uri(name))


def dataset_asset(name: str) -> Asset:
    """The :class:`airflow.sdk.Asset` of a dataset (Airflow is imported only here)."""
    from airflow.sdk import Asset

    return Asset(name=dataset_asset_name(name), uri=dataset_asset_uri(name))
