# Spine developer commands. `make` (or `make help`) lists them.
#
# Nothing here needs Docker: RabbitMQ and PostgreSQL are the local servers (scripts/ensure_servers.sh
# starts them if they are installed and stopped) or whatever SPINE_AMQP_URL / SPINE_PG_URL name.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV_STAMP := .venv/.synced
# Absolute, so a test that changes directory still imports `shared` and `services`.
PY := PYTHONPATH=$(CURDIR) .venv/bin/python
PYTEST := $(PY) -m pytest

ERP_SAMPLES := samples/erp/customers.csv samples/erp/products.json
# The hand-written reference pipeline `make bench` compares Spine with (run in the same run).
LIMIT_DIR ?= $(CURDIR)/../shared/bench/limit

.PHONY: help venv env services-up migrate topology run test test-unit test-integration test-e2e \
	soak bench lint clean distclean

help: ## list the targets (the default)
	@if [ -t 1 ]; then c='\033[36m'; r='\033[0m'; else c=; r=; fi; \
	echo "usage: make TARGET   (Python runs from .venv with PYTHONPATH=$(CURDIR))"; \
	awk -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*## "} \
		/^[a-zA-Z0-9_-]+:.*## / {printf "  %s%-17s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## create or update .venv from uv.lock (fast when nothing changed)

# uv itself lives in .tools, apart from the project's environment, so `uv sync` never removes it.
$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Keyed on uv.lock: with --frozen, uv installs exactly the lock and ignores pyproject edits anyway.
$(VENV_STAMP): uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=.venv $(UV) sync --frozen
	@touch $@

env: ## write a fresh SPINE_JWT_SECRET into .env unless it already has one (never overwrites)
	@touch .env && chmod 600 .env
	@if grep -qE '^[[:space:]]*(export[[:space:]]+)?SPINE_JWT_SECRET=.+' .env; then \
		echo ".env already has SPINE_JWT_SECRET"; \
	else \
		if [ -s .env ] && [ -n "$$(tail -c1 .env)" ]; then echo >> .env; fi; \
		echo "SPINE_JWT_SECRET=$$(python3 -c 'import secrets; print(secrets.token_hex(32))')" >> .env; \
		echo "wrote a new SPINE_JWT_SECRET to .env"; \
	fi

services-up: ## make sure RabbitMQ and PostgreSQL answer (starts local ones if needed)
	@scripts/ensure_servers.sh

migrate: venv services-up ## create the four databases if missing and migrate them to head
	$(PY) -m spine_cli db setup

topology: venv services-up ## declare the events and dead-letter exchanges
	$(PY) -m spine_cli topology declare

run: venv env services-up migrate topology ## run the four services in the foreground (Ctrl-C stops)
	$(PY) -m spine_cli erp import $(ERP_SAMPLES)
	$(PY) scripts/run.py

test: venv env services-up ## all tests: unit, integration and e2e (one pytest run)
	$(PYTEST) tests -q $(PYTEST_ARGS)

test-unit: venv ## unit tests only (no I/O, no servers)
	$(PYTEST) tests/unit -q $(PYTEST_ARGS)

test-integration: venv env services-up ## integration tests (real PostgreSQL and RabbitMQ)
	$(PYTEST) tests/integration -q $(PYTEST_ARGS)

test-e2e: venv env services-up ## end-to-end tests (the services as real processes)
	$(PYTEST) tests/e2e -q $(PYTEST_ARGS)

SOAK_ARGS ?= --orders 10000 --rate 15 --kills 20 --rabbit-graceful 1 --rabbit-kills 1 --pg-restarts 1
soak: venv env ## the large chaos run on private servers (SOAK_ARGS="--seed N ..." replays one)
	$(PY) -m tests.chaos.run $(SOAK_ARGS)

bench: venv env services-up ## Spine vs the reference pipeline, interleaved (BENCH_ARGS="--rounds 1 -n 1000")
	$(PY) bench/run.py --limit-dir "$(LIMIT_DIR)" $(BENCH_ARGS)

# bandit's "nosec encountered, but no failed test" warnings are noise: bandit visits every node of
# a waived line, and only one of them is the finding.
lint: venv ## ruff, mypy --strict, bandit, pip-audit of uv.lock (SPINE_AUDIT_STRICT=1: unaudited fails)
	.venv/bin/ruff check .
	$(PY) -m mypy --strict shared services spine_cli
	$(PY) -m mypy bench
	.venv/bin/bandit -c pyproject.toml -q -r shared services spine_cli scripts bench \
		2> >(grep -v 'nosec encountered' >&2)
	$(PY) scripts/audit_dependencies.py

clean: ## remove caches (keeps .venv, .tools and .env)
	find . -path ./.venv -prune -o -path ./.tools -prune -o -type d \
		\( -name __pycache__ -o -name .pytest_cache -o -name .mypy_cache -o -name .ruff_cache \) \
		-exec rm -rf {} +

distclean: clean ## also remove .venv and .tools (keeps .env: it holds your secret)
	rm -rf .venv .tools
