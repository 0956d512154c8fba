# `make test`, `make lint` and `make demo` create .venv on first use and install clipadapt into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all test-slow lint format demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

# every correctness test (the tiers below excluded by pyproject's addopts); a few minutes on 2 cores
test: $(STAMP)
	$(BIN)/python -m pytest -q

# every tier: learning, command-line subprocess, ViT-B/16 and slow tests too
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/clipadapt demo --out demo-output
	cp demo-output/report.md docs/demo.md  # the committed record of the demo's table
	cp demo-output/base2novel_16shots.png docs/  # its chart, linked from it

clean:
	rm -rf $(VENV) demo-output
