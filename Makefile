# Two commands do everything on a fresh machine:
#   make demo   set up .venv and the default model, then generate a small dataset
#   make test   set up .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo
DEMO_LIMIT ?= 24

.PHONY: setup model demo test lint bench clean-demo

setup:
	@bash scripts/setup.sh

model: setup
	@$(PY) -m rlaif model prepare

demo: model
	@$(PY) -m rlaif lint
	$(PY) -m rlaif generate --prompts prompts/rlaif-prompts.jsonl --out $(DEMO_OUT) --limit $(DEMO_LIMIT) --rounds 1

test: setup
	$(PY) -m pytest -q

lint: setup
	@$(PY) -m rlaif lint

bench: model
	$(PY) benchmarks/bench_generate.py

clean-demo:
	rm -rf $(DEMO_OUT)
