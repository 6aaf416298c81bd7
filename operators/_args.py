"""Arguments as operators receive them: templated values arrive as text or as None."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException


def blank(value: Any) -> bool:
    """None, or a template that rendered to nothing ('', 'None', 'null'): use the config."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def optional_int(value: Any, name: str, minimum: int | None = None) -> int | None:
    """A templated integer, or None when :func:`blank`; a clear error names the argument."""
    if blank(value):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AirflowException(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise AirflowException(f"{name} must be at least {minimum}, got {number}")
    return number
