# One-command habits. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default; GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url <cuda index>"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedlora-installed
# Flower, Ray and pytest state stay inside the project folder.
export FLWR_HOME ?= $(CURDIR)/.flwr-home
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup  ## five simulated hospitals fine-tune a shared LoRA adapter
	$(BIN)/fedlora simulate --scenario hospitals

test: setup  ## the whole suite, as CI runs it
	$(BIN)/pytest

test-fast: setup  ## unit tests only
	$(BIN)/pytest -m "not slow and not deployment"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python bench/round_overhead.py
	$(BIN)/python bench/dp_overhead.py
	$(BIN)/python bench/deployment_overhead.py
	$(BIN)/python bench/strategy_comparison.py

clean:
	rm -rf $(VENV) .flwr-home runs .pytest_cache .mypy_cache .ruff_cache
