# Two commands on a fresh machine:
#   make demo   set up .venv, build the synthetic dataset, train, evaluate
#   make test   set up .venv, run the test suite
#   (make test-fast skips the end-to-end and subprocess tests, marked slow)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_WORKDIR ?= workdirs/demo
export MEDSEG_DATA_DIR ?= $(CURDIR)/data_cache/tensorflow_datasets

.PHONY: demo test test-fast lint format clean-demo bench-deps

# pip -qq: errors only (a failed install still stops make with pip's error).
$(VENV)/.installed: requirements.txt
	@echo "Setting up $(VENV) from requirements.txt (once; a few minutes)."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@$(PY) -m pip install -qq -r requirements.txt
	@touch $@

demo: $(VENV)/.installed
	$(PY) -m medseg_jax.main --config=configs/unet_synthetic.py \
	  --workdir=$(DEMO_WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest tests -m "not slow"

# torch and monai, for the benchmarks' peer columns only, from the default
# index (see requirements-bench.txt for which torch build that gives).
# BENCH_PIP_ARGS passes more, e.g. an index of CPU-only torch wheels.
BENCH_PIP_ARGS ?=
bench-deps: $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-bench.txt $(BENCH_PIP_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check medseg_jax configs tests benchmarks
	$(VENV)/bin/ruff format --check medseg_jax configs tests benchmarks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format medseg_jax configs tests benchmarks

clean-demo:
	rm -rf $(DEMO_WORKDIR)
