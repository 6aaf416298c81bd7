"""Operator arguments as Airflow hands them over: a rendered template is text, or None.

``render_template_as_native_obj`` turns ``"{{ params.budget }}"`` into ``12`` or ``None``, but a
value rendered by hand, by an older DAG or by a plain template arrives as ``"12"``, ``""``,
``"None"`` or ``"null"``. Every parser here reads a *blank* value as "use the config", and
raises :class:`~hitl_plugin.exceptions.ArgumentError` naming the argument otherwise. Shared by
the operators and the sensor; plain Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hitl_plugin.exceptions import ArgumentError


def blank(value: Any) -> bool:
    """None, or a template that rendered to nothing ('', 'None', 'null'): use the config."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def optional_str(value: Any, name: str) -> str | None:
    """A text (a version, a path), or None when :func:`blank`.

    An upstream step's whole result is not one: the DAG passes the field a step takes.
    """
    if blank(value):
        return None
    if isinstance(value, (dict, list, tuple)):
        raise ArgumentError(f"{name} must be a text, got a {type(value).__name__}: {value!r} "
                            "(pass the one field of the upstream result)")
    return str(value)


def required_str(value: Any, name: str) -> str:
    """A text that must be given (an upstream step's path, a version)."""
    text = optional_str(value, name)
    if text is None:
        raise ArgumentError(f"{name} is required, got {value!r}")
    return text


def _number(value: Any, name: str, kind: type, what: str) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be {what}, got {value!r}") from None


def optional_int(value: Any, name: str, minimum: int | None = None) -> int | None:
    """A templated integer, or None when :func:`blank`."""
    if blank(value):
        return None
    number = _number(value, name, int, "an integer")
    if minimum is not None and number < minimum:
        raise ArgumentError(f"{name} must be at least {minimum}, got {number}")
    return number


def optional_fraction(value: Any, name: str) -> float | None:
    """A templated number in (0, 1], or None when :func:`blank`."""
    if blank(value):
        return None
    number = _number(value, name, float, "a number in (0, 1]")
    if not 0.0 < number <= 1.0:
        raise ArgumentError(f"{name} must be in (0, 1], got {number}")
    return number


def optional_choice(value: Any, name: str, choices: Iterable[str]) -> str | None:
    """One of ``choices``, or None when :func:`blank`."""
    if blank(value):
        return None
    choices = tuple(choices)
    if str(value) not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                            f"got {value!r}")
    return str(value)


def optional_budget(value: Any) -> int | float | None:
    """A count, or a fraction in (0, 1); None when :func:`blank`."""
    if blank(value):
        return None
    number = _number(value, "budget", float, "a count or a fraction")
    if number < 0:
        raise ArgumentError(f"budget must be >= 0, got {value!r}")
    return number if 0.0 < number < 1.0 else int(number)
