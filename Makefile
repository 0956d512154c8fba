# `make test`, `make lint` and `make demo` create .venv on first use and install clipadapt into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all test-slow lint format example demo clean

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

# the method of another package: installed by its entry point, its tests (the conformance kit), a
# train that finds its preset, a sweep of it beside built-ins in two child processes, and the report
EXAMPLE := examples/clipadapt-taskres
example: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -e $(EXAMPLE)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(EXAMPLE)/tests
	rm -rf example-output
	$(BIN)/clipadapt train --method taskres --dataset syn_shapes --data-root example-output/data --out example-output/train
	$(BIN)/clipadapt sweep $(EXAMPLE)/sweep.yaml --out example-output/sweep --data-root example-output/data --jobs 2
	$(BIN)/clipadapt report example-output/sweep --out example-output/report
	$(BIN)/clipadapt export example-output/train --out example-output/export
	$(BIN)/clipadapt eval --checkpoint example-output/export --dataset syn_shapes --data-root example-output/data --out example-output/eval
	$(BIN)/clipadapt predict --checkpoint example-output/export example-output/data/synthetic/syn_shapes/images/000/test_000.png

demo: $(STAMP)
	$(BIN)/clipadapt demo --out demo-output
	cp demo-output/report.md docs/demo.md  # the committed record of the demo's table
	cp demo-output/base2novel_16shots.png docs/  # its chart, linked from it

clean:
	rm -rf $(VENV) demo-output example-output
