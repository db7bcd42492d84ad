# Two commands do everything on a fresh machine:
#   make demo   set up .venv and the default model, then generate a small AI-labelled dataset
#   make test   set up .venv and headless Chromium (browser tests), then run the test suite
# make demo-train then trains SFT, reward model, DPO and PPO on the demo output, then online DPO and GRPO
# from the judge on fresh samples (configs/*-demo.yaml)
# and samples best-of-4 with the reward model, then evaluates the DPO model against the default model
# (rlaif eval: 8 prompts of each shipped eval set) and writes the eval's report.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo
DEMO_LIMIT ?= 24
EVAL_LIMIT ?= 8

.PHONY: setup model demo demo-train test lint bench clean-demo

setup:
	@bash scripts/setup.sh

model: setup
	@$(PY) -m rlaif model prepare

demo: model
	@$(PY) -m rlaif lint
	$(PY) -m rlaif generate --prompts prompts/rlaif-prompts.jsonl --out $(DEMO_OUT) --limit $(DEMO_LIMIT) --rounds 1 --label

# PPO, best-of-N and the eval need the reward model, so rm runs first.
demo-train: demo
	$(PY) -m rlaif train sft --config configs/sft-demo.yaml
	$(PY) -m rlaif train rm --config configs/rm-demo.yaml
	$(PY) -m rlaif train dpo --config configs/dpo-demo.yaml
	$(PY) -m rlaif train ppo --config configs/ppo-demo.yaml
	$(PY) -m rlaif train online-dpo --config configs/online-dpo-demo.yaml
	$(PY) -m rlaif train grpo --config configs/grpo-demo.yaml
	$(PY) -m rlaif bon --prompts prompts/rlaif-prompts.jsonl --limit 16 --n 4 --reward-model runs/rm-demo/final --out runs/bon-demo
	$(PY) -m rlaif eval --policy runs/dpo-demo/final --baseline default --limit $(EVAL_LIMIT) --max-tokens 128 --reward-model runs/rm-demo/final --out runs/eval-demo

test: setup
	@bash scripts/setup_browser.sh
	$(PY) -m pytest -q

lint: setup
	@$(PY) -m rlaif lint

bench: model
	$(PY) benchmarks/bench_generate.py

clean-demo:
	rm -rf $(DEMO_OUT)
