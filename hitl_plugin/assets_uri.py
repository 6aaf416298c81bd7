"""The Airflow Asset that stands for a dataset: one per dataset name.

The URI scheme ``hitl://`` needs no provider: Airflow 3.3 accepts an Asset URI with any
scheme that is not ``airflow`` and that no provider claims (checked against the installed
version: no warning, no normalization). Consumers schedule on it; the merge step emits an
event on it with ``extra = {"version", "parent", "round"}``.
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


def dataset_asset(name: str) -> Asset:
    """The :class:`airflow.sdk.Asset` of a dataset (Airflow is imported only here)."""
    from airflow.sdk import Asset

    return Asset(name=dataset_asset_name(name), uri=dataset_asset_uri(name))
