# `make run` and `make test` are all a new machine needs: each installs what is missing first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
# Commands that the processes and the tests start by name (celery, moto_server, ...) come from the venv.
RUN_ENV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONUNBUFFERED=1

.DEFAULT_GOAL := help
.PHONY: help install run migrate records test test-fast faults browser screenshots bench bench-admin lint format

help:
	@echo "make run      install, migrate, then start the web admin, the Celery worker and beat, and a local"
	@echo "              Firehose emulator with demo data (Ctrl-C stops everything)"
	@echo "make test     the whole test suite (PostgreSQL when DATABASE_URL points at it, SQLite otherwise)"
	@echo "make test-fast  the suite without tests/faults (the fault scenarios take about 4 minutes)"
	@echo "make faults   only the fault scenarios: a whole deployment under crashes and outages"
	@echo "make browser  only the browser tests: an operator's day in headless Chromium against a whole deployment"
	@echo "              (screenshots of every step in var/screenshots/steps)"
	@echo "make screenshots  the browser tests, refreshing the README's screenshots in docs/screenshots"
	@echo "make bench    the throughput and resync benchmark (its own PostgreSQL, Redis, gunicorn, workers, emulator)"
	@echo "make bench-admin  every operator page timed against 1,000,000 members and 10,000,000 deliveries"
	@echo "make lint     ruff check, ruff format --check, and the layers (import-linter, docs/architecture.md)"
	@echo "make records  print the records the demo stream delivered to the emulated S3 bucket"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when requirements.txt changed since the last successful install.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# A development .env with fresh keys; never committed (.gitignore), see .env.example for every variable.
.env: | $(STAMP)
	@$(PY) -c "import secrets; from cryptography.fernet import Fernet; \
	print('# Development settings written by make run; .env.example documents every variable.'); \
	print('DEBUG=true'); \
	print('SECRET_KEY=' + secrets.token_urlsafe(50)); \
	print('FIELD_ENCRYPTION_KEYS=' + Fernet.generate_key().decode())" > .env.tmp
	@mv .env.tmp .env
	@echo "Wrote .env (DEBUG=true, a new SECRET_KEY and FIELD_ENCRYPTION_KEYS)."

var:
	mkdir -p var

migrate: $(STAMP) .env | var
	$(PY) manage.py migrate --no-input

# Starts Redis too when nothing answers on 127.0.0.1:6379 and redis-server is installed.
run: migrate
	@procs="firehose web worker beat"; \
	if ! $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1).close()" 2>/dev/null; then \
		if command -v redis-server >/dev/null; then \
			echo "Redis does not answer on 127.0.0.1:6379: starting one for this run."; procs="redis $$procs"; \
		else \
			echo "Redis does not answer on 127.0.0.1:6379 and redis-server is not installed" \
				"(Debian: apt-get install redis-server). Start it, or set CELERY_BROKER_URL in .env."; \
		fi; \
	fi; \
	$(RUN_ENV) exec $(VENV)/bin/honcho start -f Procfile.dev $$procs

records: $(STAMP) .env
	$(PY) manage.py demo_records

test: $(STAMP) | var
	$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) | var
	$(RUN_ENV) $(PY) -m pytest --ignore=tests/faults $(PYTEST_ARGS)

faults: $(STAMP) | var
	$(RUN_ENV) $(PY) -m pytest tests/faults $(PYTEST_ARGS)

browser: $(STAMP) | var
	$(RUN_ENV) $(PY) -m pytest tests/browser $(PYTEST_ARGS)

screenshots: $(STAMP) | var
	$(RUN_ENV) SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/browser $(PYTEST_ARGS)

bench: $(STAMP) | var
	$(RUN_ENV) $(PY) bench/run.py $(BENCH_ARGS)

bench-admin: $(STAMP) | var
	$(RUN_ENV) $(PY) bench/admin_scale.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
