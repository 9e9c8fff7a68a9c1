# The two quick-start commands are `make run` and `make test`; both install what they need first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.turnout-installed
# Test workers: most of a test's time is spent waiting on the processes it starts, so more workers than
# cores pays (docs/testing.md has the figures: 4 is fastest on 2 cores now that servers are forked from a
# preloaded forkserver); `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 4

.PHONY: install run test lint bench fuzz soak clean

$(STAMP): pyproject.toml scripts/install.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/turnout serve

test: $(STAMP)
	@# Bytecode once for the hundreds of processes the tests start: where PYTHONDONTWRITEBYTECODE is set (as on
	@# this project's machines) each process would otherwise compile turnout from source (~0.3 s of CPU a start).
	@$(BIN)/python -m compileall -q turnout tests
	$(BIN)/ruff check turnout tests bench examples
	$(BIN)/lint-imports
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check turnout tests bench examples
	$(BIN)/lint-imports
	$(BIN)/python -m mypy

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
