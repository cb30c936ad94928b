# make sweep  — install (once) and run the default sweep (sweeps/laptop.yaml)
# make test   — install (once) and run the test suite
# make ui     — open the MLflow UI on ./runs (http://127.0.0.1:5000)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= sweeps/laptop.yaml
ARGS   ?=
PYTEST ?= -x
RUNS   ?= runs

.PHONY: setup sweep test test-unit ui clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch is pinned to the CPU build in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

sweep: setup
	$(PY) -m mixray.sweep $(SWEEP) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST)

# A lean MLflow server (1 worker, ~0.5 GB; `mlflow ui` is 15 processes) on loopback only.
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db --workers 1 --host 127.0.0.1 --port 5000

clean:
	rm -rf $(RUNS)
