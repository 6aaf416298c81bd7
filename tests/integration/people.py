"""SIMULATED people for integration tests: they label a Label Studio project once it exists."""

from __future__ import annotations

import threading
from typing import Any


class SimulatedPeople:
    """SIMULATED annotators who label a project as soon as it exists: a context manager
    around a thread running :func:`hitl_dev.simulator.simulate` (``summary`` holds its
    result once the block has ended)."""

    def __init__(self, label_studio: Any, title: str, truth: dict,
                 **simulate_kwargs: Any) -> None:
        self.ls, self.title, self.truth = label_studio, title, truth
        self.kwargs = {"until_empty": True, "timeout": 180, "poll": 0.5, **simulate_kwargs}
        self.done = threading.Event()
        self.summary: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from hitl_dev.simulator import simulate
        from hitl_plugin.labeling.client import LabelStudioClient

        client = LabelStudioClient(self.ls.url, self.ls.token)
        project = None
        while project is None and not self.done.is_set():
            found = client.find_project(self.title)
            project = None if found is None else int(found["id"])
            self.done.wait(0.5)
        if project is not None:
            self.summary.update(simulate(self.ls.url, self.ls.token, project, self.truth,
                                         stop_event=self.done, **self.kwargs))

    def __enter__(self) -> SimulatedPeople:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)
