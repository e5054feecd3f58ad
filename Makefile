# The two commands: `make run` (try the product) and `make test` (the whole suite).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
PORT ?= 8000
# The main row runs on the newest supported Python (3.13, else 3.12), from PATH or pyenv.
PYTHON ?= $(shell scripts/find-python)
# The oldest supported row: Python 3.11 with Django 5.2 LTS.
PYTHON_OLDEST ?= $(shell scripts/find-python --oldest)
OLDEST := .venv-oldest
UV_VERSION := 0.13.9

.PHONY: run serve test test-oldest faults scale pgbouncer lint clean

# uv installs the pinned requirements several times faster than pip.
$(UV):
	@test -n "$(PYTHON)" || { echo "Python >= 3.12 not found; set PYTHON=/path/to/python3.13" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The core and the embedded demo only: no Modal SDK, boto3 or Redis client.
$(VENV)/.installed: requirements.txt $(UV)
	$(UV) pip install --python $(PY) --quiet -r requirements.txt
	touch $@

# What `make serve` adds: PostgreSQL's pool, the Redis broker, uvicorn.
$(VENV)/.installed-extras: $(VENV)/.installed requirements-extras.txt
	$(UV) pip install --python $(PY) --quiet -r requirements.txt -r requirements-extras.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-extras.txt requirements-dev.txt
	$(UV) pip install --python $(PY) --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=1 $(PY) manage.py demo_setup
	@echo "Serving on http://127.0.0.1:$(PORT)/  (admin: /admin/, API docs: /api/docs)"
	DJANGO_DEBUG=1 $(PY) manage.py runserver 127.0.0.1:$(PORT)

# Production serving: uvicorn, one process per core, the API on its lean path
# (modalkit_django.asgi), static files collected and served by WhiteNoise. Set
# DATABASE_URL, BROKER_URL and DJANGO_SECRET_KEY; run workers
# beside it with `manage.py taskiq worker`. On Linux each process accepts on a socket of
# its own (modalkit_django.serve, SO_REUSEPORT): with uvicorn's one shared socket, one
# process took most keep-alive connections (bench/submit.py --servers uvicorn,uvicorn-reuseport).
WEB_PROCESSES ?= $(shell nproc 2>/dev/null || echo 2)
ifeq ($(shell uname -s),Linux)
SERVER := $(PY) -m modalkit_django.serve project.asgi:application --processes $(WEB_PROCESSES)
else
SERVER := $(PY) -m uvicorn project.asgi:application --workers $(WEB_PROCESSES)
endif
serve: $(VENV)/.installed-extras
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} $(SERVER) --host $${HOST:-127.0.0.1} --port $(PORT) --no-access-log

# The suite, after the static checks (ruff, mypy, migrations) that CI holds it to.
test: lint
	scripts/ensure-services
	scripts/ensure-browser
	scripts/ensure-pgbouncer
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole suite again on the oldest supported row (CI runs it after `make test`).
$(OLDEST)/.installed: requirements.txt requirements-extras.txt requirements-dev.txt .ci/oldest-overrides.txt $(UV)
	@test -n "$(PYTHON_OLDEST)" || { echo "Python 3.11 not found; set PYTHON_OLDEST" >&2; exit 1; }
	test -x $(OLDEST)/bin/python || $(PYTHON_OLDEST) -m venv $(OLDEST)
	$(UV) pip install --python $(OLDEST)/bin/python --quiet -r requirements-dev.txt --override .ci/oldest-overrides.txt
	touch $@

test-oldest: $(OLDEST)/.installed
	scripts/ensure-services
	scripts/ensure-browser
	scripts/ensure-pgbouncer
	$(OLDEST)/bin/python -m pytest --no-cov $(PYTEST_ARGS)

# Faults caused for real with the shipped timers (minutes): kills workers, Redis, PostgreSQL
# of their own and measures how soon every accepted job settles. CI runs it after `make test`.
faults: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) -m pytest -m faults --no-cov -s -q $(PYTEST_ARGS)

scale: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) -m pytest tests/test_scale.py -m scale --no-cov -s -q $(PYTEST_ARGS)

# End-to-end and fault tests again, with every database connection (the test process's,
# the web processes' and workers', migrate's) through a private PgBouncer in transaction mode
# (tests/pgbouncer.py; docs/how-to/pgbouncer.md). CI runs it after `make scale`. Any test
# runs so: make pgbouncer PGBOUNCER_TESTS=tests/test_sweeper.py
# Chosen to prove each path once in about two minutes: the API and workers as processes,
# lease renewals, the sweep, heartbeats, deliveries, a PostgreSQL outage. (Two web and two
# worker processes draining 600 jobs, tests/test_e2e_processes.py, passes too: a minute more.)
PGBOUNCER_TESTS ?= tests/test_pgbouncer.py \
	tests/test_e2e_faults.py::test_a_job_survives_its_worker_being_killed \
	tests/test_e2e_faults.py::test_a_slow_job_that_is_alive_is_never_reclaimed \
	tests/test_e2e_faults.py::test_two_workers_sweep_once_per_period_between_them \
	tests/test_heartbeats.py::test_a_worker_beats_counts_its_jobs_and_records_its_clean_stop \
	tests/test_e2e_worker.py::test_job_succeeds_and_its_result_is_delivered \
	tests/test_faults.py::test_postgres_stopped_for_ten_seconds
pgbouncer: $(VENV)/.installed-dev
	scripts/ensure-services
	scripts/ensure-pgbouncer
	$(PY) -m pytest -p tests.pgbouncer -m 'e2e or faults or pgbouncer' --no-cov -q $(PGBOUNCER_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=1 $(VENV)/bin/mypy modalkit_django project
	$(VENV)/bin/lint-imports --no-cache
	DJANGO_DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_CHECK_DIR)
	rm -rf $(DOCS_CHECK_DIR)

# The documentation site (mkdocs.yml, docs/): its reference pages are generated from the
# code by docs/hooks.py. `make lint` builds it with warnings as errors, in a directory of
# its own so that a check never overwrites a site being served. Not with --quiet: it hides
# the warnings from --strict too, and a broken link would pass. NO_MKDOCS_2_WARNING
# silences Material's banner about MkDocs 2.
DOCS_CHECK_DIR := .site-check
DOCS_PORT ?= 8001
.PHONY: docs docs-serve
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

clean:
	rm -rf $(VENV) $(OLDEST) db.sqlite3* .coverage htmlcov .pytest_cache .mypy_cache .ruff_cache dist site $(DOCS_CHECK_DIR)

# The API fuzzed at length (minutes): at least FUZZ_CASES schemathesis cases against uvicorn,
# on a database of its own; prints every failure with a curl command that reproduces it.
# tests/test_fuzz.py runs 150 of the same in `make test`.
FUZZ_CASES ?= 10000
.PHONY: fuzz
fuzz: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/fuzz.py --cases $(FUZZ_CASES)

# The admin screenshots the docs show (docs/screenshots/), taken by the browser tests in Chromium.
.PHONY: screenshots
screenshots: $(VENV)/.installed-dev
	scripts/ensure-services
	scripts/ensure-browser
	MODALKIT_SCREENSHOTS=docs/screenshots $(PY) -m pytest --no-cov -q tests/test_browser.py $(PYTEST_ARGS)

# What one job writes to PostgreSQL (row versions, index entries, WAL, bytes on disk):
# counts from pg_stat and from the WAL read with pg_waldump, so it must run where the
# database's files are (this machine), as root or postgres.
.PHONY: bench-storage
bench-storage: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/storage.py

# Submits, claims, the drain and the admin on an empty database, then again with
# HISTORY finished jobs (and their deliveries) in the tables; prints the ratios.
HISTORY ?= 2000000
.PHONY: bench-history
bench-history: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/history.py --history $(HISTORY)

# `modalkit purge` of RETENTION_JOBS finished jobs while a client submits at 200/s: the
# purge's time, the submits' latency before, during and after, the dead tuples it leaves.
RETENTION_JOBS ?= 1000000
.PHONY: bench-retention
bench-retention: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/retention.py --jobs $(RETENTION_JOBS)

# The admin at 1,000,000 jobs and 1,000,000 deliveries: seeds its own database once
# (modalkit_bench_admin, about a minute), then prints the median time of each page.
.PHONY: bench-admin
bench-admin: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/admin_scale.py

# The worker's drain with PostgreSQL and Redis 1 ms away each way (a network namespace,
# a veth pair, a relay on the host side), beside loopback, two worker processes, a few
# minutes. Needs root; not run in CI.
.PHONY: bench-rtt
bench-rtt: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) bench/rtt.py $(BENCH_RTT_ARGS)
