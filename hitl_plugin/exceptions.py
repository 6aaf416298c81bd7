"""Every error the package raises on purpose, in one place.

All derive from :class:`HitlError`, and each also from the built-in class it behaves like
(``ValueError`` for bad input, ``RuntimeError`` for a failed operation), so callers may catch
either. Plain Python: no Airflow import; an Airflow task fails on any of them, with the message,
which always names the file, field, argument or service call at fault.
"""

from __future__ import annotations


class HitlError(Exception):
    """Base class of the package's errors."""


class ConfigError(HitlError, ValueError):
    """A pipeline config could not be read or did not validate."""


class ArgumentError(HitlError, ValueError):
    """An operator argument (often a rendered template) has no usable value."""


class DatasetError(HitlError, RuntimeError):
    """A dataset or version is missing, corrupt or cannot be written."""


class CocoError(HitlError, ValueError):
    """A COCO file failed validation; ``problems`` lists what is wrong."""

    def __init__(self, source: str, problems: list[str], total: int) -> None:
        self.source = source
        self.problems = problems
        self.total = total
        shown = "\n".join(f"  - {p}" for p in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{source}: {total} problem(s) in COCO file\n{shown}{more}")


class LockTimeout(HitlError, TimeoutError):
    """A file lock was not obtained in time (another process holds it)."""


#: HTTP statuses after which the server did not act on the request.
RETRY_ALWAYS = frozenset({429, 502, 503, 504})


class LabelStudioError(HitlError, RuntimeError):
    """A Label Studio call failed.

    :ivar status: HTTP status, or ``None`` when no response came (connection error, timeout).
    :ivar reason: a short reason (never holds the token).
    :ivar method: HTTP method of the failed call.
    :ivar path: API path of the failed call (no query string).
    :ivar sent: ``False`` when the request certainly did not reach the server (connect error).
    :ivar permanent: waiting cannot fix it though no HTTP status came (a TLS certificate
        that does not verify).
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        method: str = "",
        path: str = "",
        sent: bool = True,
        permanent: bool = False,
    ) -> None:
        self.reason = reason
        self.status = status
        self.method = method
        self.path = path
        self.sent = sent
        self.permanent = permanent
        where = f"{method} {path}".strip()
        code = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"Label Studio {where}: {code}: {reason}" if where else reason)

    @property
    def transient(self) -> bool:
        """Whether waiting and asking again may succeed."""
        if self.permanent:
            return False
        return self.status is None or self.status in RETRY_ALWAYS or self.status >= 500


class LabelStudioAuthError(LabelStudioError):
    """Label Studio rejects the connection's token even after a renewal: a configuration
    error (never transient); the message names the server, the connection, the token type
    and what to check."""


class InvalidResult(HitlError, ValueError):
    """A result region from the labeling service that cannot be accepted."""


class LabelsNotReadyError(HitlError, RuntimeError):
    """The labeling round did not complete as required (deadline, service down, auth...)."""
