# numerics: `make test` runs the suite, `make study` writes reports/, `make bench` the performance
# report, `make notebook` opens JupyterLab on notebooks/. Each sets up .venv/ (pinned, from
# pyproject.toml) on first use. On a machine without a package registry, PYTHON=python3 skips the
# virtual environment (e.g. `make gpu-check PYTHON=python3`).
#
# `make study PROFILE=smoke|default|full` (default: default); STUDY_OPTIONS passes more options to
# `python -m studies.run_all`, e.g. STUDY_OPTIONS="--only accuracy --workers 2 --no-cache".

VENV := .venv
PYTHON ?= $(VENV)/bin/python
ifeq ($(PYTHON),$(VENV)/bin/python)
SETUP := $(VENV)/installed
else
SETUP :=
endif

PROFILE ?= default
OUTPUT ?= reports
STUDY_OPTIONS ?=

.PHONY: install test test-cpu test-gpu-simulator study bench notebook gpu-compile gpu-check gpu-wheels \
	clean-cache clean

install: $(SETUP)

# --no-compile: pip would byte-compile every file of the environment (about two minutes here,
# mostly frameworks' files nothing imports); tools/install_check.py imports what the project
# imports, so Python writes the bytecode of those alone (unless told not to: hence the env -u)
$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --no-compile -e '.[gpu,frameworks,study,test]'
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python tools/install_check.py
	touch $@

test: test-cpu test-gpu-simulator

# two workers (the CI machine's cores); tests/conftest.py keeps each input format's tests on one
# worker, numerics/cache.py makes their shared kernel cache safe to write at once
TEST_WORKERS ?= 2

test-cpu: $(SETUP)
	$(PYTHON) -m pytest tests --ignore=tests/gpu -q -n $(TEST_WORKERS) --dist loadgroup

# the GPU kernels under numba-cuda's simulator (no GPU needed; pure Python, so two workers halve
# it), then compiled to real PTX
test-gpu-simulator: $(SETUP)
	NUMBA_ENABLE_CUDASIM=1 $(PYTHON) -m pytest tests/gpu -q -n $(TEST_WORKERS) --dist loadgroup

gpu-compile: $(SETUP)
	$(PYTHON) -m numerics.gpu_compile

# the prepared GPU run (tools/gpu_run.py): environment check, correctness, timings, the GPU test
# suite on the hardware, the frameworks on the GPU, the report; into $OUT or reports/gpu/
GPU_PROFILE ?= default
gpu-check: $(SETUP)
	$(PYTHON) tools/gpu_run.py run --profile $(GPU_PROFILE)

# here, where pip reaches PyPI: the pinned numba-cuda wheel for the GPU machine's python3
# (3.12, manylinux x86_64) into build/gpu-wheels/ (ignored), which the device run carries
gpu-wheels: $(SETUP)
	$(PYTHON) tools/gpu_run.py download

study: $(SETUP)
	$(PYTHON) -m studies.run_all --profile $(PROFILE) --output $(OUTPUT) $(STUDY_OPTIONS)

bench: $(SETUP)
	$(PYTHON) -m studies.performance --profile $(PROFILE) --output $(OUTPUT)

# JupyterLab (the optional `notebook` dependencies) into .venv, then the lab on notebooks/
notebook: $(VENV)/notebook-installed
	$(VENV)/bin/jupyter lab notebooks/

$(VENV)/notebook-installed: $(VENV)/installed
	$(VENV)/bin/python -m pip install --quiet -e '.[notebook]'
	touch $@

# the compiled kernels and the study cells (studies/engine/cache.py)
clean-cache:
	rm -rf $${NUMERICS_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/numerics}
	rm -rf $${NUMERICS_CELL_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/numerics/cells}

clean: clean-cache
	rm -rf $(VENV) .pytest_cache .hypothesis
