"""airflow-hitl: human-in-the-loop object-detection training for Apache Airflow."""

from __future__ import annotations


def package_version() -> str:
    """The installed version of airflow-hitl (recorded with every checkpoint)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airflow-hitl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
