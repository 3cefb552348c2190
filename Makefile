# `make demo` and `make test` work on a fresh machine: they create .venv on first use.
# `make test` also installs the Debian packages its integration tests run for real (PostgreSQL, the SLURM
# daemons, Chromium) when any is missing; `make demo` needs none of them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup system-packages demo test bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

system-packages:
	scripts/system-packages.sh

demo: setup
	$(BIN)/wconv run sweeps/smoke.yaml
	$(BIN)/wconv run sweeps/smoke_denoise.yaml
	$(BIN)/wconv best --sweep smoke
	$(BIN)/wconv best --sweep smoke_denoise
	$(BIN)/wconv report smoke
	$(BIN)/wconv report smoke_denoise

# One pytest-xdist worker per core; tests/conftest.py keeps the tests that share a SLURM cluster, a smoke database
# or a module's runs on one worker, and starts the longest first.
test: setup system-packages
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

bench: setup
	$(BIN)/python benchmarks/operator_overhead.py

clean:
	rm -rf $(VENV) results .pytest_cache
