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

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,video,serve,onnx]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pixelseg demo --out pixelseg-demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) pixelseg-demo .pytest_cache
