"""Session-wide settings: Airflow never touches ~/airflow during the tests."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports Airflow: its home and config are read at import time.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hitl-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("HITL_HOME", tempfile.mkdtemp(prefix="hitl-tests-home-"))


def _stub_module():
    name = "hitl_tests_ls_stub"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "labeling" / "ls_stub.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def stub_ls():
    """A stub Label Studio on 127.0.0.1 (tests/labeling/ls_stub.py), for faults only."""
    with _stub_module().StubLabelStudio() as stub:
        yield stub


def _airflow_dag_env(home: Path, dag_files: dict[str, str], **extra: str) -> dict[str, str]:
    import subprocess

    env = {**os.environ, "AIRFLOW_HOME": str(home / "home"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
           **extra}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    (home / "dags").mkdir(parents=True, exist_ok=True)
    for name, text in dag_files.items():
        (home / "dags" / name).write_text(text)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env,
                   capture_output=True, check=True, timeout=300)
    return env


@pytest.fixture(scope="session")
def airflow_dag_env():
    """``airflow_dag_env(home, {name: text})``: a fresh Airflow home with a migrated SQLite
    database and these DAG files; returns the environment for a subprocess that runs one of
    them with ``dag.test()``."""
    return _airflow_dag_env


def _drift_report(n: int, shift: float, *, seed: int = 0, **fields) -> dict:
    import numpy as np

    from hitl_plugin.model.drift import DriftInputs, detect

    rng = np.random.default_rng(seed)
    split = np.array(["heldout"] * n + ["pool"] * n)
    pool = split == "pool"
    n_boxes = rng.poisson(np.where(pool, 3.0 - shift, 3.0)).clip(0)
    inputs = DriftInputs(
        image_id=np.arange(2 * n), split=split, n_boxes=n_boxes,
        confidence=np.where(n_boxes > 0, rng.uniform(0.3, 0.9, 2 * n), np.nan),
        class_counts=rng.multinomial(n_boxes, [1 / 3] * 3),
        embedding=rng.normal(size=(2 * n, 6)) + np.where(pool, shift, 0.0)[:, None],
        categories=np.array([1, 2, 3]))
    out = detect(inputs, permutations=99)
    settings = {"enabled": True, "alpha": 0.05, "permutations": 99, "min_images": 30,
                "budget_factor": 2.0, "budget_cap": 0.25, "ood_share": 0.5, "neighbours": 5,
                "seed": 0}
    action = {"budget_factor": 2.0, "budget_cap": 0.25, "ood_share": 0.5,
              "asset": f"hitl://drift/{fields.get('dataset', 'shapes')}"}
    return {"schema_version": 1, "enabled": True, "settings": settings, **fields, **out,
            **({"action": action} if out["detected"] else {})}


@pytest.fixture(scope="session")
def drift_report():
    """``drift_report(n, shift, seed=0, **fields)``: a ``drift.json`` as the drift step
    writes it (``fields`` such as ``dag_id``, ``run_id``, ``dataset`` added), from
    :func:`hitl_plugin.model.drift.detect` on random arrays (99 permutations): ``n``
    held-out and ``n`` pool images, the pool's embeddings moved by ``shift`` and its images
    with ``shift`` fewer boxes on average (0: both from one world)."""
    return _drift_report
