"""A PRM as the online trainers' dense reward: step scores land on the policy tokens that end the steps, and
PPO and GRPO run with ``prm`` set (real vLLM, tiny models)."""
import json

import pytest
import torch

from rlaif.data.steps import StepSplitter
from rlaif.engine.base import TokenSample
from rlaif.train.process_rewards import step_layout


class WordPRM:
    """Every word a step (marker " "); a step's score is 0.1 for "bad", 0.9 otherwise."""

    splitter = StepSplitter("marker", " ")

    def step_scores(self, prompts, responses):
        return [[(0.1 if r[a:b] == "bad" else 0.9, (a, b)) for a, b in self.splitter.spans(r)] for r in responses]

    def step_probs(self, prompts, steps):
        return [[0.1 if s == "bad" else 0.9 for s in ss] for ss in steps]


def test_step_scores_land_on_the_tokens_that_end_the_steps(tokenizer):
    texts = ["w1 bad w2", "good", ""]
    samples = []
    for t in texts:
        ids = tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)
        samples.append(TokenSample((1, 2), ids, tuple(0.0 for _ in ids), tokenizer.decode(list(ids), skip_special_tokens=True), "stop"))
    rewards, pos, mask = step_layout(WordPRM(), tokenizer, [[]] * 3, samples)
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert pos[0].tolist() == [0, 1, 2] and pos[1, 0] == 0
    assert rewards[0].tolist() == [pytest.approx(0.9), pytest.approx(0.1), pytest.approx(0.9)]


def make_prm_folder(policy_dir, out, marker=" "):
    """A random-init two-label token classifier on the tiny chat model's tokenizer, cutting steps at spaces."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForTokenClassification

    from rlaif.reward.prm import write_prm_config

    cfg = AutoConfig.from_pretrained(policy_dir)
    cfg.num_labels = 2
    torch.manual_seed(1)
    LlamaForTokenClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(out)
    write_prm_config(out, "\n", StepSplitter("marker", marker))
    return out


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_ppo_and_grpo_take_a_prm_as_a_dense_reward(engine, tiny_chat, prompt_file, tmp_path, kind):
    from rlaif.train import grpo, ppo
    from rlaif.train.config import load_config

    prm = make_prm_folder(tiny_chat, tmp_path / "prm")
    common = [f"model={tiny_chat}", f"data={prompt_file}", f"runs_dir={tmp_path}", f"name={kind}", "tensorboard=false",
              "samples_per_prompt=2", "batch_size=8", "max_new_tokens=12", "max_length=64", "max_prompt_length=32",
              "lr=3e-3", "warmup_ratio=0", "max_steps=1", f"prm={prm}", "prm_weight=0.5"]
    if kind == "ppo":
        cfg = load_config(ppo.PPOConfig, None, [*common, "rollout_batch_size=8", "eval_fraction=0"])
        s = ppo.setup(cfg, engine=engine)
        out = ppo.train(s)
        ppo.cleanup(s)
    else:
        cfg = load_config(grpo.GRPOConfig, None, [*common, "rollout_batch_size=8", "judge_weight=0", "probe_size=0"])
        s = grpo.setup(cfg, engine=engine)
        out = grpo.train(s)
        grpo.cleanup(s)
    assert 0.0 < out["train/reward/prm_step"] < 1.0 and out["train/reward/prm_steps_per_response"] >= 1
    logged = [json.loads(line) for line in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    assert any("train/reward/prm_step" in r for r in logged)
    if kind == "grpo":  # no outcome reward: the advantages are the process advantages alone, not zero
        assert out["train/advantage_abs"] > 0
