# The two commands a fresh machine needs: `make up` (the product with its demo) and
# `make test` (the suite). Each builds or refreshes the local .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-failure lint bench venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# `make up PORT=8750` when 8740 is taken (or PINFLOW_UP_PORT=8750 in the environment).
up: $(STAMP)
	$(BIN)/pinflow up --demo $(if $(PORT),--port $(PORT))

# The suite waits on real processes far more than it computes, so it runs in TEST_PROCESSES
# pytest processes (pytest-xdist) even on 2 cores; a module's tests on one backend stay in one
# process, so its servers and clusters start once (tests/support/xdist_groups.py).
# TEST_PROCESSES=0 runs it in one process.
TEST_PROCESSES ?= 4

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --ignore=tests/failure -n $(TEST_PROCESSES) $(PYTEST_ARGS)

# The failure suite (crashes, restarts, the HA soak, bad-input sweeps): minutes of real
# processes, so CI runs it as a step of its own after `make test`.
test-failure: $(STAMP)
	$(BIN)/python -m pytest tests/failure -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Benchmarks print figures, they do not pass or fail (BENCHMARKS.md). Archive serving needs
# Debian's wrk and nginx: `apt-get install -y wrk nginx-light` (bench/serve.py says so).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pinflow
