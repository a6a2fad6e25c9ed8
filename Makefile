# numerics: `make test` runs the suite, `make study` writes reports/, `make bench` the performance
# report. Each sets up .venv/ (pinned, from pyproject.toml) on first use. On a machine without a
# package registry, PYTHON=python3 skips the virtual environment (e.g. `make gpu-check PYTHON=python3`).

VENV := .venv
PYTHON ?= $(VENV)/bin/python
ifeq ($(PYTHON),$(VENV)/bin/python)
SETUP := $(VENV)/installed
else
SETUP :=
endif

SOURCES := $(wildcard numerics/*.py)
STUDIES := $(wildcard studies/*.py)

.PHONY: install test test-cpu test-gpu-simulator study bench gpu-compile gpu-check clean-cache clean

install: $(SETUP)

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[gpu,frameworks,study,test]'
	touch $@

test: test-cpu test-gpu-simulator

# two workers (the CI machine's cores); tests/conftest.py keeps each input format's tests on one
# worker, numerics/cache.py makes their shared kernel cache safe to write at once
TEST_WORKERS ?= 2

test-cpu: $(SETUP)
	$(PYTHON) -m pytest tests --ignore=tests/gpu -q -n $(TEST_WORKERS) --dist loadgroup

# the GPU kernels under numba-cuda's simulator (no GPU needed), then compiled to real PTX
test-gpu-simulator: $(SETUP)
	NUMBA_ENABLE_CUDASIM=1 $(PYTHON) -m pytest tests/gpu -q

gpu-compile: $(SETUP)
	$(PYTHON) -m numerics.gpu_compile

gpu-check: $(SETUP)
	$(PYTHON) -m studies.gpu_check

study: $(SETUP)
	$(PYTHON) -m studies.run_all

bench: $(SETUP)
	$(PYTHON) -m studies.performance

clean-cache:
	rm -rf $${NUMERICS_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/numerics}

clean: clean-cache
	rm -rf $(VENV) .pytest_cache .hypothesis
