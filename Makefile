# Goci: `make up` sets up and starts Goci on the embedded default; `make test` runs
# every check. Both work on a fresh Debian machine with Python 3.11+ and make.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: up test bench fmt clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "make: Goci needs Python 3.11 or newer as '$(PYTHON)' (found: $$($(PYTHON) --version 2>&1))." >&2; \
	  echo "      Install it, or run: make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "make: '$(PYTHON)' cannot create virtual environments: on Debian, apt-get install python3-venv" >&2; \
	  exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable .
	@touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

up: $(VENV)/.installed
	$(VENV)/bin/goci up --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py check --fail-level WARNING
	$(PY) -m pytest

bench: $(VENV)/.dev-installed
	$(PY) bench/bench_cli.py
	$(PY) bench/bench_docker.py
	$(PY) bench/bench_up.py
	$(PY) bench/bench_server.py
	$(PY) bench/bench_browser.py
	$(PY) bench/bench_secrets.py
	$(PY) bench/bench_clone.py
	$(PY) bench/bench_webhook.py
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_oauth.py
	$(PY) bench/bench_images.py
	$(PY) bench/bench_deliver.py

fmt: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
