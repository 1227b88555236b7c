# The README's two commands are `make run` and `make test`; the rest are for developers and CI.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test lint typecheck unit bench fuzz chaos infra-check clean venv

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

venv: $(STAMP) $(NODE_STAMP)

## make run [ONCE=1] [SCENARIO=small|M|L|XL]: simulator + Azurite + devhost with a demo tenant, live progress.
run: venv
	$(PY) scripts/run_stack.py $(if $(filter-out 0 false no,$(ONCE)),--once,) --scenario $(or $(SCENARIO),small)

## make test: lint, types, the whole pytest suite (starts Azurite and the simulator itself), infra checks.
test: venv lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory infra-check

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## make bench [BENCH=quick] [BENCH_ARGS=…]: benchmarks → bench/results.json + docs/benchmarks.md (quick: < 5 min).
bench: venv
	$(PY) -m bench $(if $(filter quick,$(BENCH)),--quick,) $(BENCH_ARGS)

fuzz: venv
	$(PY) -m tests.fuzz.run --full

chaos: venv
	$(PY) -m pytest -q -m chaos tests

infra-check:
	bash infra/check.sh

clean:
	rm -rf $(VENV) .venv-infra node_modules .run .pytest_cache .mypy_cache .ruff_cache
