"""The plugin page finds the storage root the way the tasks do: the Airflow Variable
``hitl_storage_root`` (set in Airflow's metadata database, as a user sets it in the UI)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent('''
    import json, sys
    from airflow.models.variable import Variable
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient
    from hitl_plugin.plugin import create_app

    Variable.set("hitl_storage_root", sys.argv[1])
    create_auth_manager()
    app = create_app()  # no root given: resolved per request
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="a",
                                                                       role="admin")
    client = TestClient(app)
    out = {"pipelines": client.get("/api/pipelines").json(),
           "rounds": client.get("/api/rounds/from_variable").json()}
    Variable.delete("hitl_storage_root")
    out["after_delete"] = client.get("/api/pipelines").json()
    print("RESULT " + json.dumps(out))
''')


def test_plugin_reads_the_storage_root_variable(tmp_path, airflow_dag_env):
    root = tmp_path / "root"
    run = root / "rounds" / "from_variable" / "manual__1"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"run_id": "manual__1", "finished": "x"}))
    env = airflow_dag_env(tmp_path / "airflow", {}, HITL_HOME=str(tmp_path / "elsewhere"))
    proc = subprocess.run([sys.executable, "-c", CHECK, str(root)], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["pipelines"] == ["from_variable"]
    assert [r["run_id"] for r in out["rounds"]] == ["manual__1"]
    assert out["after_delete"] == []  # back to HITL_HOME, which holds no rounds
