# Two user commands:
#   make app   build .venv if needed, then open the notebooks as an app (marimo run notebooks/)
#   make test  build .venv if needed, install Debian's Chromium if missing, then run the test suite
# The environment is (re)installed whenever requirements.txt is newer than the stamp file.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
# extra flags for `marimo run`, e.g. make app APP_ARGS="--headless --port 2718"
APP_ARGS ?=

# the browser tests (tests/test_browser.py) drive Debian's Chromium, never a browser Playwright downloads
CHROMIUM := /usr/bin/chromium
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: app test venv browser

app: $(STAMP)
	$(PY) -m marimo run notebooks/ $(APP_ARGS)

test: $(STAMP) browser
	$(PY) -m pytest -n 2 tests

venv: $(STAMP)

browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)
