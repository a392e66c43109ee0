# The README's commands. Each target sets up .venv itself on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A pinned torch: on a CPU-only machine with the local wheel this is the small CPU build; on a GPU
# machine the same pin resolves to the CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all bench lint robustness cluster-test container-test clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medseg3d demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not cluster and not container" --timeout 900 -q --doctest-modules medseg3d data_prep tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not cluster and not container" --timeout 1800 -q --doctest-modules medseg3d data_prep tests

# The fault and bad-input suite (tests/robustness), its slow parts included: kills, load. Within 20 minutes.
robustness: $(STAMP)
	$(BIN)/python -m pytest --timeout 1200 -q tests/robustness
	$(MAKE) cluster-test

# A real one-node SLURM on this machine (installs slurm-wlm and munge with apt-get when missing, as root):
# requeue, time-limit warning and node failure of a training job; a sharded inference array (docs/deploy.md).
cluster-test: $(STAMP)
	$(BIN)/python -m pytest -m cluster --timeout 1800 -q -s tests/cluster

# The container image (Dockerfile) built with podman on a Debian base made here by debootstrap (installs podman,
# buildah and debootstrap when missing, as root); --version, synth and infer inside it as its non-root user.
container-test: $(STAMP)
	$(BIN)/python -m pytest -m container --timeout 1800 -q -s tests/container

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .ruff_cache
