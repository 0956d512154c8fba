# `make test` and `make demo` create .venv on first use and install clipadapt into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/clipadapt demo --out demo-output
	cp demo-output/report.md docs/demo.md  # the committed record of the demo's table
	cp demo-output/base2novel_16shots.png docs/  # its chart, linked from it

clean:
	rm -rf $(VENV) demo-output
