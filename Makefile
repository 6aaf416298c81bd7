# airflow-hitl: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
LSVENV := .venv-labelstudio
LS_VERSION := 1.23.2
STAMP := $(VENV)/.hitl-setup-stamp
LSSTAMP := $(LSVENV)/.hitl-setup-stamp
export HITL_HOME ?= $(CURDIR)/.hitl
# `make demo HUMAN=1`: wait for a person to label in Label Studio instead of the simulator.
export HUMAN

.PHONY: setup lock check-airflow debs demo test test-unit test-integration lint stop base-checkpoint clean

setup: $(STAMP) $(LSSTAMP) debs

# Debian packages the tests need, installed when missing (needs root: CI and these machines
# are): chromium for the browser tests (Playwright drives it through executable_path, so no
# browser is ever downloaded), docker-compose to validate docker-compose.yaml (no engine),
# postgresql and redis-server for the native distributed round (run as our own processes).
DEBS := chromium docker-compose postgresql redis-server
debs:
	@missing=$$(for d in $(DEBS); do command -v $$d >/dev/null || dpkg -s $$d >/dev/null 2>&1 || echo $$d; done); \
	if [ -n "$$missing" ]; then echo "[setup] installing Debian packages: $$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	  >/tmp/hitl-apt.log 2>&1 || { tail -20 /tmp/hitl-apt.log; exit 1; }; fi

# Reinstalls only when pyproject.toml or the lock file changed; otherwise setup takes well
# under a second. constraints.txt pins every package (pyproject.toml has ranges).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing airflow-hitl into $(VENV) (first time: a few minutes)"
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev,distributed]" 2>&1 | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0
	@touch $@

# Label Studio lives in its own venv: its SDK pins numpy, PyJWT and OpenCV versions that break ours.
$(LSSTAMP):
	@test -x $(LSVENV)/bin/python || $(PYTHON) -m venv $(LSVENV)
	@echo "[setup] installing Label Studio $(LS_VERSION) into $(LSVENV)"
	$(LSVENV)/bin/pip install --quiet "label-studio==$(LS_VERSION)" 2>&1 | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0
	@touch $@

# The lock file anew: the newest releases that pyproject.toml's ranges allow, in a fresh venv.
lock:
	rm -rf /tmp/hitl-lock-venv && $(PYTHON) -m venv /tmp/hitl-lock-venv
	/tmp/hitl-lock-venv/bin/pip install --quiet ".[dev,distributed,bench]"
	{ sed -n '1,3p' constraints.txt; /tmp/hitl-lock-venv/bin/pip freeze --exclude-editable \
	  | grep -v '^airflow-hitl'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf /tmp/hitl-lock-venv

# The unit tests against another Airflow 3.x (default: the minor release before ours).
check-airflow:
	bash scripts/check_airflow_compat.sh $(AIRFLOW)

demo: setup
	$(VENV)/bin/python scripts/demo.py

test: setup
	bash scripts/run_tests.sh

lint: setup
	$(VENV)/bin/ruff check hitl_plugin hitl_dev operators sensors dags tests

stop:
	-$(VENV)/bin/hitl stack stop

base-checkpoint: setup
	$(VENV)/bin/hitl base-checkpoint --out hitl_plugin/assets/base_yolov8n.pt --epochs 50 --imgsz 160 --data-imgsz 128 --seed 1000 --train 400 --val 100

clean:
	rm -rf $(VENV) $(LSVENV) .hitl
