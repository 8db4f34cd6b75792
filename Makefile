# The two commands a user needs: `make demo` (the local stack, a sample campaign and its funnel) and `make test`.
# Everything runs from the project's own .venv and its own PostgreSQL/Redis under .local/ (git-ignored).

PYTHON3 ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
STACK   := $(PY) -m devstack

.PHONY: help install services test lint up down demo status lock clean screenshots

help:
	@echo "make test    install, start PostgreSQL + Redis, migrate, then ruff + pytest"
	@echo "make up      the local stack: Airflow, tracking service (https), local SES, PostgreSQL, Redis"
	@echo "             (make up EXECUTOR=celery: Airflow on the CeleryExecutor with STACK_CELERY_WORKERS workers)"
	@echo "make demo    make up, a sample list and campaign, SES feedback, simulated readers: the funnel"
	@echo "make down    stop exactly what make up started"
	@echo "make status  what is running"
	@echo "make clean   stop everything and delete what the stack made (.local, and its folder in /var/tmp)"
	@echo "make screenshots  refresh docs/images/ from the analyst journey's browser test"

$(PY):
	@command -v $(PYTHON3) >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 || \
		{ echo "Python 3.11 is required (python3.11 or python3 on PATH)"; exit 1; }
	$$(command -v $(PYTHON3) || command -v python3) -m venv $(VENV)

# Reinstalls only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

install: $(STAMP)

services: $(STAMP)
	$(STACK) services

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(STACK) prepare-tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# EXECUTOR=celery (or STACK_EXECUTOR in the environment): the CeleryExecutor; unset: the LocalExecutor.
EXECUTOR ?= $(STACK_EXECUTOR)
up: $(STAMP)
	STACK_EXECUTOR=$(EXECUTOR) $(STACK) up

down:
	@if [ -x $(PY) ]; then $(STACK) down; else echo "nothing to stop (no .venv)"; fi

status: $(STAMP)
	$(STACK) status

demo: up
	$(PY) -m devstack.demo

# docs/images/: the analyst journey's screenshots (docs/analysts.md shows them), taken by its browser test on the
# test stack. Not part of `make test`, whose screenshots go to artifacts/ (git-ignored).
screenshots: $(STAMP)
	$(STACK) prepare-tests
	DOCS_SCREENSHOTS=$(CURDIR)/docs/images $(VENV)/bin/pytest -q tests/e2e/test_analyst_journey.py -k trigger_form

# Re-resolve the pins: a fresh venv, the direct dependencies from requirements.txt, one pip resolve, one freeze.
lock:
	rm -rf .local/lock-venv && $$(command -v $(PYTHON3) || command -v python3) -m venv .local/lock-venv
	sed -n '/^# Direct/,/^# Transitive/p' requirements.txt | grep '==' | sed -E '/# hold/!s/==.*//; s/ *#.*//' \
		> .local/direct.txt  # names only, except a pin marked "# hold" (kept exactly, with its reason)
	.local/lock-venv/bin/pip install --quiet -r .local/direct.txt
	.local/lock-venv/bin/pip freeze > .local/freeze.txt
	@echo "new resolve in .local/freeze.txt: merge it into requirements.txt"

# Everything the stack made, wherever it put it: .local, and PostgreSQL's folder under /var/tmp when it had to live
# outside the checkout. Without .venv the system Python runs the same command (devstack needs only the stdlib here).
clean:
	@if [ -x $(PY) ]; then $(STACK) clean; \
	else PYTHONPATH=include $$(command -v $(PYTHON3) || command -v python3) -m devstack clean; fi

# Keep Airflow's metadata database small: every run leaves dag_run, task_instance, log and XCom rows behind (a
# per-minute dispatcher alone makes 1,440 runs a day, and the scheduler slows as they pile up). Deletes those older
# than AIRFLOW_DB_RETENTION_DAYS from the local stack's metadata DB (`make up` writes its environment to
# .local/stack.env); AIRFLOW_DB_CLEAN_ARGS=--dry-run shows what would go.
AIRFLOW_DB_RETENTION_DAYS ?= 30
AIRFLOW_DB_CLEAN_ARGS ?=
STACK_ENV ?= .local/stack.env
.PHONY: airflow-db-clean
airflow-db-clean: $(STAMP)
	@test -f $(STACK_ENV) || { echo "no $(STACK_ENV): run 'make up' first (it writes the stack's Airflow environment)"; exit 1; }
	@before=$$($(PY) -c 'import datetime as d, sys; days = int(sys.argv[1]); assert days >= 1, "at least 1 day"; \
		print((d.datetime.now(d.timezone.utc) - d.timedelta(days=days)).isoformat(timespec="seconds"))' \
		'$(AIRFLOW_DB_RETENTION_DAYS)' 2>/dev/null) || { echo "AIRFLOW_DB_RETENTION_DAYS must be a whole number of days >= 1"; exit 1; }; \
	echo "deleting Airflow metadata older than $$before ($(AIRFLOW_DB_RETENTION_DAYS) days)"; \
	. ./$(STACK_ENV) && $(VENV)/bin/airflow db clean --clean-before-timestamp "$$before" --skip-archive --yes \
		--error-on-cleanup-failure $(AIRFLOW_DB_CLEAN_ARGS)
