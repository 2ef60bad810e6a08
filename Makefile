# Fresh machine: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qtools-installed
DEMO_DIR ?= out/demo

.PHONY: setup setup-browser vllm-env demo toy test lint clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml requirements.lock kernels/pyproject.toml qtools/numerics/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e ./kernels -e .
	touch $(STAMP)

demo: setup
	$(BIN)/python scripts/demo.py --out $(DEMO_DIR)

# Rebuild the committed toy model (about 8 minutes on 2 cores); fails if it misses its quality gate.
toy: setup
	rm -rf models/toy-qwen3-coder.new
	$(BIN)/qtools toy build models/toy-qwen3-coder.new
	rm -rf models/toy-qwen3-coder && mv models/toy-qwen3-coder.new models/toy-qwen3-coder

# Best effort: headless Chromium for the HTML-report screenshot test (skipped without it). Never fails the
# build: no apt, no root or no network only print a note; each apt step is capped at 5 minutes.
setup-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && timeout 300 apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "setup-browser: chromium not installed; the report screenshot test will be skipped"

# vLLM's CPU build in its own venv (it pins its own torch and transformers), for the interop tests: built once per
# lock file under $QTOOLS_CACHE (about 4 minutes, 3.5 GB); fails, and so fails `make test`, when it cannot be built.
vllm-env: setup
	$(BIN)/python scripts/build_vllm_env.py

# CI has no GPU: Triton kernels run in the interpreter (override with TRITON_INTERPRET=0 on a GPU machine).
test: setup setup-browser vllm-env
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} $(BIN)/python -m pytest -q tests kernels/tests

lint: setup
	$(BIN)/ruff check qtools kernels tests scripts
	$(BIN)/ruff format --check qtools kernels tests scripts

clean:
	rm -rf $(VENV) out
