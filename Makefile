# The README's two commands are `make run` and `make test`; the rest are for developers and CI.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test lint typecheck unit bench fuzz chaos infra-check clean venv lock

# requirements-dev.txt is the dev lock: every production and dev distribution pinned with hashes (pip checks them).
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

## make chaos [CHAOS_RUNS=200]: the scripted chaos scenarios, then the seeded random fault campaign (last line:
## runs=N lost=0 duplicates=0 diverged=0 wrongly_deactivated=0). Replay one seed: python -m tests.chaos.campaign --seed S
chaos: venv
	$(PY) -m pytest -q -p no:cacheprovider -m chaos tests
	$(PY) -m tests.chaos.campaign --runs $(or $(CHAOS_RUNS),200)

infra-check:
	bash infra/check.sh

## make lock: re-lock after editing requirements.in / requirements-dev.in (add UPGRADE=1 to move every pin to the
## newest release). One tool, uv; hashes for every file of each pinned release. requirements.txt is what the Flex
## remote build installs; requirements-dev.txt pins the same production versions (-c requirements.txt).
LOCK := $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 --annotation-style line \
	--custom-compile-command 'make lock' $(if $(filter-out 0 false no,$(UPGRADE)),--upgrade,)
lock: $(STAMP)
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) -c requirements.txt requirements-dev.in -o requirements-dev.txt

clean:
	rm -rf $(VENV) .venv-infra .venv-prod node_modules .run .pytest_cache .mypy_cache .ruff_cache
