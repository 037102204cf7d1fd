# wobble: `make demo` and `make test` are all a new machine needs (Python 3.11 and make).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# reinstall whenever pyproject.toml changes (its hash names the stamp)
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PERSONS ?= 20000
SEED ?= 7
BENCH_PERSONS ?= 1000000

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: help install browser demo test test-fast bench lint clean

help: ## List every target with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install wobble with its test tools

demo: $(STAMP) ## Run the whole pipeline on a synthetic population (PERSONS=20000 SEED=7, in data/demo)
	$(BIN)/wobble demo --persons $(PERSONS) --seed $(SEED) --workdir data/demo

browser: $(STAMP) ## Find or install a headless Chromium for the browser tests (apt-get as root, else Playwright's)
	$(BIN)/python scripts/get_browser.py

test: $(STAMP) browser ## Run the whole test suite, browser tests included
	$(BIN)/python -m pytest --tb=short

test-fast: $(STAMP) browser ## The quick subset for development (tests not marked slow; under 3 minutes)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP) ## Time synth and each stage at BENCH_PERSONS people (default 1,000,000); peak memory too
	$(BIN)/python scripts/bench.py --persons $(BENCH_PERSONS)

lint: $(STAMP) ## Check style with ruff
	$(BIN)/ruff check src tests flows scripts

clean: ## Remove generated data (keeps data/README.md) and caches
	rm -rf data/demo data/bench .pytest_cache
