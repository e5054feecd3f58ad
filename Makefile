# The two commands: `make run` (try the product) and `make test` (the whole suite).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Django 6 needs Python >= 3.12: take python3.12/3.13 from PATH, else from pyenv.
PYTHON ?= $(shell scripts/find-python)

.PHONY: run test faults lint check clean

$(VENV)/.installed: requirements.txt
	@test -n "$(PYTHON)" || { echo "Python >= 3.12 not found; set PYTHON=/path/to/python3.12" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo_setup
	@echo "Serving on http://127.0.0.1:$(PORT)/  (admin: /admin/, API docs: /api/docs)"
	$(PY) manage.py runserver 127.0.0.1:$(PORT)

# The suite, after the static checks (ruff, mypy, migrations) that CI holds it to.
test: lint
	scripts/ensure-services
	$(PY) -m pytest $(PYTEST_ARGS)

# Faults caused for real with the shipped timers (minutes): kills workers, Redis, PostgreSQL
# of their own and measures how soon every accepted job settles. CI runs it after `make test`.
faults: $(VENV)/.installed-dev
	scripts/ensure-services
	$(PY) -m pytest -m faults --no-cov -s -q $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy modalkit_django project
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) db.sqlite3* .coverage htmlcov .pytest_cache .mypy_cache .ruff_cache
