"""The key query of a submit: skipped only for a batch that was never sent."""

from __future__ import annotations

from hitl_dev.bench.fanout import synthetic_selection
from hitl_plugin.labeling.submit import submit_batch
from hitl_plugin.paths import RoundPaths


class _Client:
    """Records calls; holds imported tasks like a project would (a test double of our client)."""

    def __init__(self) -> None:
        self.queries = 0
        self.tasks: dict[str, int] = {}

    def tasks_by_key(self, project_id, dag_id, run_id, ids, batch_label=None):
        self.queries += 1
        keys = {f"{dag_id}|{run_id}|{i}" for i in ids}
        return {k: [{"id": t}] for k, t in self.tasks.items() if k in keys}

    def import_tasks(self, project_id, payload):
        ids = []
        for task in payload:
            self.tasks[task["data"]["hitl_key"]] = len(self.tasks) + 1
            ids.append(len(self.tasks))
        return ids


def _args(tmp_path, start: int, stop: int) -> dict:
    return dict(project_id=1, selection=synthetic_selection(20, dag_id="d", run_id="r"),
                start=start, stop=stop, dag_id="d", run_id="r", model_version="m",
                paths=RoundPaths(tmp_path, tmp_path / "models"), sync_model_version=False)


def test_first_send_skips_the_query_and_a_resend_finds_every_key(tmp_path):
    client = _Client()
    args = _args(tmp_path, 0, 10)
    first = submit_batch(client, **args)
    assert (first["submitted"], client.queries) == (10, 0)
    again = submit_batch(client, **args)
    assert (again["submitted"], again["already_present"], client.queries) == (0, 10, 1)
    assert len(client.tasks) == 10


def test_a_batch_recorded_as_importing_is_queried_before_importing(tmp_path):
    """A crash after the record (and maybe after the import) must not duplicate."""
    client = _Client()
    args = _args(tmp_path, 10, 20)

    class Crash(Exception):
        pass

    real_import = client.import_tasks

    def import_then_crash(project_id, payload):
        real_import(project_id, payload)
        raise Crash

    client.import_tasks = import_then_crash
    try:
        submit_batch(client, **args)
    except Crash:
        pass
    client.import_tasks = real_import
    out = submit_batch(client, **args)
    assert (out["submitted"], out["already_present"], len(client.tasks)) == (0, 10, 10)


def test_a_slow_commit_after_a_lost_answer_is_waited_for_not_imported_again(stub_ls, tmp_path):
    """Issue 13, defect 5: an import whose answer was lost while the server still committed
    it was re-read a second later, found missing and imported again (duplicates)."""
    from hitl_plugin.labeling.client import LabelStudioClient

    # the connection drops after the request; the server commits the tasks 2 s later
    stub_ls.fault("POST", "/api/projects/1/import", drop=True, commit_after=2.0)
    with LabelStudioClient(stub_ls.url, stub_ls.token, retries=0) as client:
        out = submit_batch(client, **{**_args(tmp_path, 0, 10), "backoff": 0.2,
                                      "settle_s": 10.0})
    assert (out["submitted"], out["already_present"]) == (0, 10)
    assert len(stub_ls.state.tasks) == 10  # each key once
    assert stub_ls.count("POST", "/api/projects/1/import") == 1
