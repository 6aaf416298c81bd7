"""The one inter-process file lock of the package, with a timeout.

Publishing a dataset version, promoting a checkpoint and setting up a Label Studio project are
serialised across processes (parallel mapped tasks, a retry racing a late first try) with a
lock file beside what they write. A holder that hangs must not hang every other task forever,
so waiting is bounded and ends in :class:`~hitl_plugin.exceptions.LockTimeout`, which names
the lock file and what it guards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hitl_plugin.exceptions import LockTimeout

#: Seconds to wait for a lock by default: longer than any holder needs (a merge of a
#: COCO-train2017-sized set takes ~15 s here), short next to a task's retry delay chain.
DEFAULT_TIMEOUT = 600.0


@contextmanager
def file_lock(path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT,
              what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder when missing).

    :param timeout: seconds to wait; :class:`LockTimeout` after that.
    :param what: what the lock guards, for the error message.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: one lock object is one holder, whichever thread releases it.
    lock = FileLock(str(path), timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        guarded = f" ({what})" if what else ""
        raise LockTimeout(f"could not lock {path}{guarded} within {timeout:g} s: another "
                          "process holds it") from None
    try:
        yield
    finally:
        lock.release()
