#!/usr/bin/env bash
# Run every test: unit tests, then the integration tests that start a real Label Studio
# and a real Airflow. A skipped test is reported, never counted as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export HITL_HOME="${HITL_TEST_HOME:-$(mktemp -d /tmp/hitl-test.XXXXXX)}"
echo "[test] storage root for this run: $HITL_HOME"
start=$(date +%s)
echo "[test] lint (ruff; heavy imports banned at module level)"
.venv/bin/ruff check hitl_plugin hitl_dev operators sensors dags tests scripts
.venv/bin/python -m pytest -p no:cacheprovider --durations=15 \
  --ignore=tests/integration/distributed "$@" tests
# The last stage: a round in the distributed mode (PostgreSQL, Redis, Airflow on the
# CeleryExecutor with its workers), with its two faults.
stage=$(date +%s)
echo "[test] distributed stage"
.venv/bin/python -m pytest -p no:cacheprovider "$@" tests/integration/distributed
echo "[test] distributed stage took $(( $(date +%s) - stage )) s"
echo "[test] total wall time: $(( $(date +%s) - start )) s"
