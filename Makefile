# dotchi — two commands do all setup on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dotchi-installed
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: setup ingest run serve test lint eval bench browser clean

setup: $(STAMP)

# torch first, from the local CPU wheel (a plain `torch` requirement would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

ingest: setup
	$(PY) -m ingest

run: setup
	$(PY) -m ingest --quiet || { echo "ingest reported failures (see above); starting anyway"; }
	$(PY) -m bot serve

serve: setup
	$(PY) -m bot serve

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads a browser).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: setup browser
	$(PY) -m ruff check ingest bot tests
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check ingest bot tests
	$(PY) -m ruff format --check ingest bot tests || true

eval: setup
	$(PY) -m bot eval

bench: setup
	$(PY) -m bot bench

clean:
	rm -rf .dotchi tests/artifacts .pytest_cache
