# On a fresh machine with Python 3.11+:  make demo  |  make test  |  make check
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check bench contract clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tsodso demo

# JOBS test processes at once (pytest-xdist): most long tests wait on scenario clocks and brokers,
# so three share two cores well (four measured faster quietly, but failed beside two CPU hogs);
# JOBS=0 runs them in this process
JOBS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadgroup

# lint, format and type checks (CI runs them before the tests)
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/tsodso bench rtt --broker embedded
	$(BIN)/tsodso bench rtt --broker mosquitto
	$(BIN)/tsodso bench mol --bids 1000

contract: $(STAMP)
	$(BIN)/tsodso schemas export contract
	$(BIN)/python -m tsodso.testbed.scenario_reference docs/scenario.md

clean:
	rm -rf $(VENV) runs .pytest_cache
