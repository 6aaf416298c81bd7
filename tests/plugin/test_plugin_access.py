"""Per-DAG access to the HITL view, through Airflow's whole API server app and its real
auth manager, in the two ways Airflow can say "this user may not read this DAG":

- the FAB auth manager (``apache-airflow-providers-fab``): a role with ``can_read`` on
  ``DAG:hitl_shapes`` only;
- Airflow's default SimpleAuthManager, which grants by role, in multi-team mode (``[core]
  multi_team``, Airflow >= 3.2): a DAG belongs to the team of its DAG bundle, and a user
  reads only the DAGs of their teams.

Multi-team, on a fresh metadata database: two teams, one DAG bundle each (``hitl_shapes``
in team_a's, ``hitl_other`` in team_b's), users ``one`` (viewer in team_a), ``both`` (viewer
in both teams) and ``none`` (viewer in no team). FAB: roles ``shapes_reader`` (``can_read``
on ``DAG:hitl_shapes`` and on DAG runs) for ``one``, Admin for ``both``, and one with DAG
runs but no DAG for ``none``. Each signs in at ``POST /auth/token`` with their password and
sends the token as a Bearer token (and once as the UI's ``_token`` cookie) to the plugin
mounted by Airflow at ``/hitl``. ``one`` gets 200 for hitl_shapes's pipeline page, run view,
rounds, plot and dataset, and 403 for hitl_other's; the index and ``/api/pipelines`` list
only the DAG they may read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHECK = textwrap.dedent('''
    import json, sys

    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    client = TestClient(create_app())
    paths = json.loads(sys.argv[1])
    passwords = json.loads(sys.argv[2])
    out = {"anonymous": {p: client.get(p).status_code for p in paths}}
    for name, password in passwords.items():
        login = client.post("/auth/token", json={"username": name, "password": password})
        assert login.status_code == 201, login.text
        token = login.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        out[name] = {p: client.get(p, headers=headers).status_code for p in paths}
        out[name]["pipelines"] = client.get("/hitl/api/pipelines", headers=headers).json()
        out[name]["index"] = client.get("/hitl/", headers=headers).text
        plugins = client.get("/api/v2/plugins", headers=headers).json().get("plugins", [])
        out[name]["views"] = [v for p in plugins if p["name"] == "hitl"
                              for v in p["external_views"]]
        client.cookies.set("_token", token)  # as the UI's frame sends it
        out[name]["cookie"] = client.get("/hitl/pipelines/hitl_shapes").status_code
        client.cookies.clear()
    print("RESULT " + json.dumps(out))
''')

SHAPES = ["/hitl/pipelines/hitl_shapes", "/hitl/runs/hitl_shapes/manual__2",
          "/hitl/api/rounds/hitl_shapes", "/hitl/api/runs/hitl_shapes/manual__2",
          "/hitl/plot/hitl_shapes/manual__2.png", "/hitl/api/datasets/shapes"]
OTHER = ["/hitl/pipelines/hitl_other", "/hitl/runs/hitl_other/manual__1",
         "/hitl/api/rounds/hitl_other", "/hitl/api/runs/hitl_other/manual__1",
         "/hitl/plot/hitl_other/manual__1.png", "/hitl/api/datasets/secret_set"]
PASSWORDS = {"one": "pw-one-4242", "both": "pw-both-4242", "none": "pw-none-4242"}


def _check(env: dict[str, str], passwords: dict[str, str]) -> dict:
    """Run :data:`CHECK` in a process with Airflow configured by ``env``."""
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(SHAPES + OTHER),
                           json.dumps(passwords)], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _airflow(env: dict[str, str], *args: str) -> None:
    airflow = str(Path(sys.executable).parent / "airflow")
    step = subprocess.run([airflow, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert step.returncode == 0, (args, step.stdout[-2000:] + step.stderr[-3000:])


def _assert_one_reads_only_hitl_shapes(out: dict) -> None:
    assert set(out["anonymous"].values()) == {401}
    one = out["one"]
    assert {p: one[p] for p in SHAPES} == dict.fromkeys(SHAPES, 200)
    assert {p: one[p] for p in OTHER} == dict.fromkeys(OTHER, 403)
    assert one["pipelines"] == ["hitl_shapes"] and one["cookie"] == 200
    assert 'data-testid="pipeline-hitl_shapes"' in one["index"]
    assert "hitl_other" not in one["index"]
    # Airflow's UI finds the three views of the plugin (GET /api/v2/plugins; FAB lets only a
    # role with the "Plugins" permission list them)
    views = one["views"] or out["both"]["views"]
    assert sorted((v["destination"], v["href"], v["url_route"]) for v in views) == [
        ("dag", "/hitl/pipelines/{DAG_ID}", "hitl-dag"),
        ("dag_run", "/hitl/runs/{DAG_ID}/{RUN_ID}", "hitl-run"),
        ("nav", "/hitl/", "hitl")]
    both = out["both"]
    assert {p: both[p] for p in SHAPES + OTHER} == dict.fromkeys(SHAPES + OTHER, 200)
    assert both["pipelines"] == ["hitl_other", "hitl_shapes"]
    none = out["none"]
    assert {p: none[p] for p in SHAPES + OTHER} == dict.fromkeys(SHAPES + OTHER, 403)
    assert none["pipelines"] == [] and none["cookie"] == 403


def test_a_user_reads_only_the_dags_of_their_teams(root, tmp_path):
    bundles = []
    for team, dag_id in (("team_a", "hitl_shapes"), ("team_b", "hitl_other")):
        folder = tmp_path / f"dags_{team}"
        folder.mkdir()
        (folder / f"{dag_id}.py").write_text(
            f"from airflow.sdk import DAG\n\ndag = DAG({dag_id!r}, schedule=None)\n")
        bundles.append({"name": f"bundle_{team}", "team_name": team,
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(folder), "refresh_interval": 0}})
    (tmp_path / "passwords.json").write_text(json.dumps(PASSWORDS))
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__MULTI_TEAM": "True",
           "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                          "simple_auth_manager.SimpleAuthManager",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS":
               "one:viewer:team_a,both:viewer:team_a|team_b,none:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
           "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
           "AIRFLOW__API_AUTH__JWT_SECRET": "hitl-access-test-secret",
           "HITL_HOME": str(root), "_AIRFLOW_PROCESS_CONTEXT": "server"}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    for args in (["db", "migrate"], ["teams", "create", "team_a"],
                 ["teams", "create", "team_b"], ["dags", "reserialize"]):
        _airflow(env, *args)
    _assert_one_reads_only_hitl_shapes(_check(env, PASSWORDS))


def test_fab_a_role_limited_to_one_dag(root, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "pipelines.py").write_text(
        "from airflow.sdk import DAG\n\nshapes = DAG('hitl_shapes', schedule=None)\n"
        "other = DAG('hitl_other', schedule=None)\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__AUTH_MANAGER":
               "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
           "AIRFLOW__API_AUTH__JWT_SECRET": "hitl-access-test-secret",
           "HITL_HOME": str(root), "_AIRFLOW_PROCESS_CONTEXT": "server"}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    _airflow(env, "db", "migrate")  # Airflow's tables and FAB's
    _airflow(env, "dags", "reserialize")
    # one: may read hitl_shapes only; both: Admin; none: runs, but no DAG
    _airflow(env, "roles", "create", "shapes_reader", "no_dags")
    _airflow(env, "roles", "add-perms", "shapes_reader", "-r", "DAG:hitl_shapes", "DAG Runs",
             "-a", "can_read")
    _airflow(env, "roles", "add-perms", "no_dags", "-r", "DAG Runs", "-a", "can_read")
    for user, role in (("one", "shapes_reader"), ("both", "Admin"), ("none", "no_dags")):
        _airflow(env, "users", "create", "-u", user, "-p", PASSWORDS[user], "-r", role,
                 "-f", user, "-l", "tester", "-e", f"{user}@people.local")
    _assert_one_reads_only_hitl_shapes(_check(env, PASSWORDS))
