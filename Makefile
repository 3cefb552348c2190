# `make demo` and `make test` work on a fresh machine: they create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/wconv run sweeps/smoke.yaml
	$(BIN)/wconv run sweeps/smoke_denoise.yaml
	$(BIN)/wconv best --sweep smoke
	$(BIN)/wconv best --sweep smoke_denoise

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/operator_overhead.py

clean:
	rm -rf $(VENV) results .pytest_cache
