# Fresh machine: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qtools-installed
DEMO_DIR ?= out/demo

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml requirements.lock kernels/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e ./kernels -e .
	touch $(STAMP)

demo: setup
	$(BIN)/python scripts/demo.py --out $(DEMO_DIR)

# CI has no GPU: Triton kernels run in the interpreter (override with TRITON_INTERPRET=0 on a GPU machine).
test: setup
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} $(BIN)/python -m pytest -q tests kernels/tests

lint: setup
	$(BIN)/ruff check qtools kernels tests scripts
	$(BIN)/ruff format --check qtools kernels tests scripts

clean:
	rm -rf $(VENV) out
