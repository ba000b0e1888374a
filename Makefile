# Two commands on a fresh machine:
#   make demo   set up .venv, build the synthetic dataset, train, evaluate
#   make test   set up .venv, run the test suite
#   (make test-fast skips the end-to-end and subprocess tests, marked slow;
#   make test-notebooks runs every notebook in notebooks/, marked notebook)
# Python 3.12 (jax 0.12 needs it). Each candidate is run, not only looked
# up: a pyenv shim named python3.12 may exist and fail.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
  /usr/local/bin/python3.12 /usr/bin/python3.12 python3; do \
  "$$p" -c 'import sys; assert sys.version_info[:2] >= (3, 12)' 2>/dev/null \
  && { command -v "$$p"; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_WORKDIR ?= workdirs/demo
export MEDSEG_DATA_DIR ?= $(CURDIR)/data_cache/tensorflow_datasets

.PHONY: setup demo test test-fast test-long test-notebooks lint format clean-demo bench-deps onednn

# pip -qq: errors only (a failed install still stops make with pip's error).
$(VENV)/.installed: requirements.txt
	@echo "Setting up $(VENV) from requirements.txt (once; a few minutes)."
	@test -n "$(PYTHON)" || { echo "Python 3.12 or newer not found: make PYTHON=/path/to/python3.12"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@$(PY) -m pip install -qq -r requirements.txt
	@touch $@

# The fused CPU batch norm (medseg_jax/models/cpu_kernels.py): g++ and JAX's
# FFI headers only. Optional: when it cannot be built, runs use XLA's batch
# norm and say so in the log.
CPU_KERNELS := medseg_jax/models/native/libmedseg_cpu.so
$(CPU_KERNELS): medseg_jax/models/native/cpu_kernels.cc $(VENV)/.installed
	@$(PY) -W ignore::RuntimeWarning -m medseg_jax.models.cpu_kernels build --quiet \
	  || echo "Fused CPU batch norm not built; XLA's batch norm is used."

setup: $(VENV)/.installed $(CPU_KERNELS)

demo: setup
	$(PY) -m medseg_jax.main --config=configs/unet_synthetic.py \
	  --workdir=$(DEMO_WORKDIR)

test: setup
	$(PY) -m pytest tests -m "not notebook and not long"

test-fast: setup
	$(PY) -m pytest tests -m "not slow and not notebook and not long"

# The heaviest end-to-end tests (k-fold training, SavedModel and ONNX
# exports, adversarial kill/resume, whole command lines, multi-run
# equalities; 10 s to minutes each); CI runs them after make test.
test-long: setup
	$(PY) -m pytest tests -m long

# Every notebook top to bottom in FAST mode (minutes; CI runs it after
# make test).
test-notebooks: setup
	$(PY) -m pytest tests/notebooks_test.py -m notebook

# torch and monai, for the benchmarks' peer columns only, from the default
# index (see requirements-bench.txt for which torch build that gives).
# BENCH_PIP_ARGS passes more, e.g. an index of CPU-only torch wheels.
BENCH_PIP_ARGS ?=
bench-deps: setup
	$(PY) -m pip install --quiet -r requirements-bench.txt $(BENCH_PIP_ARGS)

# Optional CPU speed-up: oneDNN weight gradients as an XLA custom call
# (about 2 GB of Intel runtimes; see requirements-onednn.txt).
onednn: setup
	$(PY) -m pip install --quiet -r requirements-onednn.txt
	$(PY) -W ignore::RuntimeWarning -m medseg_jax.models.onednn build

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check medseg_jax configs tests benchmarks
	$(VENV)/bin/ruff format --check medseg_jax configs tests benchmarks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format medseg_jax configs tests benchmarks

clean-demo:
	rm -rf $(DEMO_WORKDIR)
