# Two user commands:
#   make app   build .venv if needed, then open the notebooks as an app (marimo run notebooks/)
#   make test  build .venv if needed, then run the test suite
# The environment is (re)installed whenever requirements.txt is newer than the stamp file.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
# extra flags for `marimo run`, e.g. make app APP_ARGS="--headless --port 2718"
APP_ARGS ?=

.PHONY: app test venv

app: $(STAMP)
	$(PY) -m marimo run notebooks/ $(APP_ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)
