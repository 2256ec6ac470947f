# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# torch==2.13.0 (CPU) comes from pip's find-links folder when the machine has one (pip config);
# elsewhere from the PyTorch CPU index. uv does not read pip's config, so it is passed on.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_SOURCE := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST := $(BIN)/python -m pytest
export PATH := $(BIN):$(PATH)

.PHONY: setup data demo test test-slow benchmark ablation bench-perf bench-gpu gpu-bundle lint \
	clean services-up services-down check-infra test-ops test-faults test-cluster families

setup: $(VENV)/.installed

# --compile-bytecode: every Ray worker imports torch/ray/mlflow; without .pyc files (and with
# PYTHONDONTWRITEBYTECODE set, as on CI) each process compiles them again (ray.init 21 s -> 8 s)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python $(TORCH_SOURCE) --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get install -y dataset-fashion-mnist || \
	  ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

# one Prefect server for every stage (flows/runtime/stack.py), not one per stage process; one
# line per stage on the screen, the stages' Prefect/Ray/MLflow output in logs/demo.log
demo: setup data
	python -m flows.stack --log logs/demo.log dvc repro
	dvc push --quiet
	python -m flows.ops.summary

# every method x seeds x scenarios -> reports/benchmark.{json,md,png}; DATASET=cifar10 DATA=<dir>
benchmark: setup data
	python -m tools.benchmark $(if $(DATASET),--dataset $(DATASET)) $(if $(DATA),--data $(DATA))

# the ablations of decouple (benchmark.variants) -> reports/ablation.{json,md,png}
ablation: setup data
	python -m tools.benchmark --scenarios class,clean_class,memorize --out ablation \
	  --methods decouple,decouple_gamma01,decouple_no_budget,decouple_keep0,decouple_no_transplant,decouple_ignore,decouple_reproduce,decouple_no_ascent,decouple_quantile,retrain

# each model family (mae, vqtoken, diffusion) inpainting an ImageFolder export, one `dvc exp run`
# each, in a clone (.families/) -> reports/families.{json,md}
families: setup data
	python -m tools.families

# orchestration overhead, unlearning vs retraining cost, scaling -> reports/perf.{json,md,png}
bench-perf: setup data
	python -m tools.perf

# the components' loops on this machine's device (CUDA when present, else a tiny CPU run):
# images/s, peak memory, data-wait share per family -> reports/gpu.{json,md}
bench-gpu: setup
	python -m tools.bench_gpu $(if $(BUDGET),--budget $(BUDGET))

# gpu/ (ignored): the pydantic wheels, at requirements.lock's versions, that a GPU machine
# with Python 3.12 and torch but no pydantic needs to run bench-gpu (docs/results.md, "On a GPU")
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-bundle:
	mkdir -p gpu/whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_17_x86_64 --dest gpu/whl \
	  $(foreach w,$(GPU_WHEELS),$(shell grep -i '^$(w)==' requirements.lock))

# pytest exits 5 when it collected no test: that is a failure here, never a pass
test: setup data
	$(PYTEST) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

# three deletion-request cycles in a row (clone, dvc pull/repro/push, commit, register, promote)
test-ops: setup data
	$(PYTEST) -m ops || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

# faults injected for real (killed workers and processes, servers down, races), < 30 min
test-faults: setup data
	$(PYTEST) -m faults || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

# two raylets on 127.0.0.1, S3 checkpoints, one node killed mid-retention (stops every local Ray)
test-cluster: setup data
	$(PYTEST) -m cluster || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

test-slow: setup data
	command -v chromium >/dev/null || $(SUDO) apt-get install -y chromium || \
	  ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)
	$(PYTEST) -m slow || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

# the local service stack (infra/local): PostgreSQL, MLflow server, S3 server, Prefect server
services-up: setup
	bash infra/local/up.sh

services-down:
	bash infra/local/down.sh

# every Kubernetes manifest validated offline against vendored schemas (infra/k8s)
check-infra: setup
	bash infra/check.sh

lint: setup
	ruff check components flows tests

clean:
	rm -rf .ray_results mlartifacts mlflow.db models data/splits .dvc/tmp
