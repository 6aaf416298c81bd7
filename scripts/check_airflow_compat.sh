#!/usr/bin/env bash
# Install airflow-hitl next to another Airflow 3.x release in a fresh venv and run the unit
# tests there (everything but tests/integration: they include the dag.test() runs of the
# operators and DAGs, which talk to that Airflow for real).
#
#   bash scripts/check_airflow_compat.sh [AIRFLOW_VERSION]     (default: 3.2.2, the minor
#                                                                release before ours)
#
# The lock file (constraints.txt) pins Airflow 3.3.2, so it is not used here: pip resolves
# pyproject.toml's ranges against the Airflow asked for, as it would in a user's environment.
# The venv is kept (HITL_COMPAT_VENV, default /tmp/hitl-airflow-<version>) so that a rerun
# skips the install. Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.2.2}"
venv="${HITL_COMPAT_VENV:-/tmp/hitl-airflow-$version}"
python="${PYTHON:-python3.11}"
log="$venv.install.log"
start=$(date +%s)
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import airflow, sys; \
sys.exit(airflow.__version__ != '$version')" 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # pip >= 26 for --uploaded-prior-to
  "$venv/bin/pip" install --quiet --upgrade "pip>=26" >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
  # Airflow is installed as its users install it: with the dependency versions of its
  # release. Airflow publishes those as a constraints file, which cannot be fetched here;
  # HITL_AIRFLOW_CONSTRAINTS names a local copy. Without one, pip takes the releases
  # uploaded before the Airflow release's wheel was built plus 14 days. (With today's
  # newest fastapi, cadwyn and starlette, Airflow 3.2.2's own dag.test() fails in its
  # execution API, whatever is installed beside it.)
  if [ -n "${HITL_AIRFLOW_CONSTRAINTS:-}" ]; then
    echo "[compat] Airflow $version with the constraints $HITL_AIRFLOW_CONSTRAINTS"
    pin=(-c "$HITL_AIRFLOW_CONSTRAINTS")
  else
    wheels="$(mktemp -d)"
    "$venv/bin/pip" download --quiet --no-deps -d "$wheels" "apache-airflow-core==$version" \
      >>"$log" 2>&1 || { tail -30 "$log"; exit 1; }
    cutoff="$("$venv/bin/python" - "$wheels" <<'PY'
import datetime, glob, sys, zipfile
built = max(i.date_time for w in glob.glob(sys.argv[1] + "/*.whl")
            for i in zipfile.ZipFile(w).infolist())
print((datetime.datetime(*built) + datetime.timedelta(days=14)).strftime("%Y-%m-%dT00:00:00Z"))
PY
)"
    echo "[compat] Airflow $version with the dependency releases uploaded before $cutoff"
    pin=(--uploaded-prior-to "$cutoff")
  fi
  echo "[compat] installing apache-airflow==$version, then airflow-hitl into $venv (log: $log)"
  "$venv/bin/pip" install --quiet "${pin[@]}" "apache-airflow==$version" >>"$log" 2>&1 \
    || { tail -30 "$log"; exit 1; }
  # Then the package (not editable: the tests import the installed one, as a user's Airflow
  # would), with pip resolving pyproject.toml's ranges while keeping Airflow's versions.
  "$venv/bin/pip" freeze | grep -v "^airflow-hitl" > "$venv/airflow-freeze.txt"
  "$venv/bin/pip" install --quiet -c "$venv/airflow-freeze.txt" ".[dev]" >>"$log" 2>&1 \
    || { tail -30 "$log"; exit 1; }
else
  echo "[compat] reusing $venv; reinstalling airflow-hitl from this tree"
  "$venv/bin/pip" install --quiet --no-deps --force-reinstall . >"$log" 2>&1 \
    || { tail -30 "$log"; exit 1; }
fi
echo "[compat] installed in $(( $(date +%s) - start )) s:"
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(apache-airflow|apache-airflow-core|apache-airflow-task-sdk|apache-airflow-providers-standard|airflow-hitl|pydantic|requests|httpx|pyyaml|fastapi|ultralytics|torch) " \
  | sed 's/^/[compat]   /'
"$venv/bin/pip" check | sed 's/^/[compat] pip check: /'
home="$(mktemp -d /tmp/hitl-compat.XXXXXX)"
echo "[compat] unit tests against Airflow $version (storage root $home)"
# A copy of the repository without its packages, so that the tests import the installed ones.
work="$(mktemp -d /tmp/hitl-compat-tree.XXXXXX)"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work"
# (hitl_plugin/assets stays: the example config's JSON Schema modeline points there; a folder
# without __init__.py never shadows the installed package)
find "$work/hitl_plugin" -mindepth 1 -maxdepth 1 ! -name assets -exec rm -rf {} +
rm -rf "$work/hitl_dev" "$work/operators" "$work/sensors"
cd "$work"
# The one test left out checks that this environment is the lock file's (Airflow 3.3.2).
HITL_HOME="$home" "$venv/bin/python" -m pytest -p no:cacheprovider -q -rfE \
  --ignore=tests/integration \
  --deselect tests/test_lock_file.py::test_this_environment_is_the_locked_one tests
