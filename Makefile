# backprop-service: `make run` serves it on this machine, `make test` tests it.
# Both create the virtual environment on first use; see README.md.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
PYTEST_ARGS ?=
BENCH_ARGS ?=

BIN := $(VENV)/bin

# What each stamp installs. A stamp is newer than pyproject.toml once its
# install succeeded, so a second `make test` costs nothing and an edited
# pyproject.toml reinstalls.
EXTRAS_run :=
EXTRAS_test := [test]
EXTRAS_bench := [bench]

.PHONY: run test lint bench venv clean help
.DEFAULT_GOAL := help

help:
	@echo "make run     serve the API on 127.0.0.1:\$$PORT ($(PORT)) with one Celery worker (SQLite, no server)"
	@echo "make test    run the whole test suite (tests/)"
	@echo "make lint    ruff (whole tree) and mypy (backprop/, service/core/)"
	@echo "make bench   run the benchmarks (benchmarks/)"
	@echo "make venv    only create $(VENV) and install the package"
	@echo "make clean   remove $(VENV) (var/, the data, stays)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "backprop-service needs Python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.$(EXTRAS_$*)'
	@touch $@

venv: $(VENV)/.stamp-run

run: $(VENV)/.stamp-run
	PORT=$(PORT) exec $(BIN)/python scripts/run_embedded.py

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: $(VENV)/.stamp-test
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

lint: $(VENV)/.stamp-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every benchmarks/*.py (not _private ones) in turn; BENCH_ARGS go to each.
bench: $(VENV)/.stamp-bench
	@set -e; found=; for script in benchmarks/[!_]*.py; do \
		[ -e "$$script" ] || continue; found=1; \
		echo "== $$script"; $(BIN)/python "$$script" $(BENCH_ARGS); \
	done; \
	[ -n "$$found" ] || { echo "make bench: no benchmarks/*.py found" >&2; exit 1; }

clean:
	rm -rf $(VENV)
