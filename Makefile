# Two user commands:
#   make app   build .venv if needed, then open the notebooks as an app (marimo run notebooks/ through
#              miras_lite.app: a random token, printed in the URL, and refusal of other sites' origins)
#   make test  build .venv if needed, install Debian's Chromium and PostgreSQL if missing, then run the test suite
# The environment is (re)installed whenever requirements.txt or pyproject.toml is newer than the stamp file.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
# extra flags for the app (`python -m miras_lite.app --help`; others go to `marimo run`),
# e.g. make app APP_ARGS="--headless --port 2718"
APP_ARGS ?=

# the browser tests (tests/test_browser.py) drive Debian's Chromium, never a browser Playwright downloads
CHROMIUM := /usr/bin/chromium
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)
# the sweep tests (tests/test_sweep.py) start their own server with initdb / pg_ctl of Debian's postgresql
# package; a path that never exists stands in for initdb while none is installed
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) /usr/lib/postgresql/none/bin/initdb)

.PHONY: app test venv browser postgres

app: $(STAMP)
	$(PY) -m miras_lite.app notebooks/ $(APP_ARGS)

test: $(STAMP) browser postgres
	$(PY) -m pytest -n 2 tests

venv: $(STAMP)

browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

postgres: $(PG_INITDB)

$(PG_INITDB):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)
