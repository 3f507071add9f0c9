# Two entry points that work on a fresh machine: `make bench` and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test bench kernels gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# PyTorch CPU is an optional oracle for the tests; convkern never needs it.
	$(PY) -m pip install -q torch==2.13.0 || echo "torch not installed: PyTorch comparisons will be skipped"
	touch $@

# One worker per core, a file per worker (the simulator runs one Python thread per CUDA thread,
# so its tests are single-core bound): 14 min instead of 23 on 2 cores.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile tests

bench: $(VENV)/.installed
	$(VENV)/bin/convkern bench

kernels: $(VENV)/.installed
	$(VENV)/bin/convkern kernels

# On a GPU machine whose Python already has numba, numba-cuda, PyTorch and pytest (no network, no
# venv): install in place, test on the device, sanitize, benchmark, report into $(GPU_CHECK_DIR).
GPU_CHECK_DIR ?= gpu-check
gpu-check:
	PYTHON=$(PYTHON) bash bench/gpu_check.sh $(GPU_CHECK_DIR)

clean:
	rm -rf $(VENV) .pytest_cache
