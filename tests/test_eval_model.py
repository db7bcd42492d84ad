"""rlaif eval on the default model: the engines' log-probabilities of given answers (which the KL
estimate is made of) against the sampler's own, and the command end to end on tiny prompt sets
(the numbers need not be good; the pipeline and its intervals must be right)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.engine.base import response_token_ids

ROOT = Path(__file__).resolve().parent.parent
CONVS = [({"role": "user", "content": "What is the capital of France? Answer in one word."},),
         ({"role": "user", "content": "Say hello to Bob in one short sentence."},),
         ({"role": "user", "content": "Write a long story about rain."},)]


@pytest.mark.vllm
def test_answer_logprobs_equal_the_samplers_in_both_engines(vllm_engine, default_model):
    """vLLM samples answers at temperature 1 and reports log p of every token it drew; scoring the
    decoded answers again (vLLM's prompt log-probs, and a transformers forward pass) must give the
    same numbers, the end-of-sequence token included when the answer ended by itself."""
    from rlaif.engine.hf_local import HFEngine

    samples = vllm_engine.sample_tokens([vllm_engine.encode_chat(c) for c in CONVS[:2]], seeds=[1, 2], max_tokens=64)
    samples += vllm_engine.sample_tokens([vllm_engine.encode_chat(CONVS[2])], seeds=[3], max_tokens=8)
    texts, ended = [s.text for s in samples], [s.ended for s in samples]
    assert any(ended) and not all(ended)  # both kinds: stopped (end token scored) and cut at the limit
    hf = HFEngine(default_model, dtype="float32", max_model_len=4096, show_progress=False)
    try:
        by_hf = hf.response_logprobs(CONVS, texts, ended)
    finally:
        hf.close()
    by_vllm = vllm_engine.response_logprobs(CONVS, texts, ended)
    same_tokens = 0
    for s, v, h in zip(samples, by_vllm, by_hf):
        assert v == pytest.approx(h, abs=2e-3)  # two engines, one answer: the same numbers
        # The text is tokenised again, canonically; where the sampler drew exactly those tokens,
        # the scores are the sampler's own (at temperature 1 a sampler sometimes draws another
        # tokenisation of the same text, which is then scored in its canonical form).
        if response_token_ids(vllm_engine.tokenizer, s.text, s.ended) == list(s.response_ids):
            same_tokens += 1
            assert v == pytest.approx(list(s.logprobs), abs=2e-3)
    assert same_tokens >= 1


def test_eval_command_on_the_default_model(default_model, tmp_path):
    """One prompt of each shipped set, both roles the default model (transformers backend): every
    interval holds its estimate, and the KL of a model to itself is exactly 0."""
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "rlaif", "eval", "--backend", "transformers", "--policy", "default", "--baseline", "default",
           "--limit", "1", "--max-tokens", "24", "--ensemble", "1", "--bootstrap", "500", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "RLAIF_REPORT": "0"})
    assert done.returncode == 0, done.stderr
    r = json.loads((out / "eval.json").read_text())
    assert r["counts"] == {"prompts": 3, "judged": 3, "policy_failed": 0, "baseline_failed": 0}
    for ci in [r["win_rate"]["overall"], r["win_rate"]["soft"], *r["win_rate"]["by_category"].values()]:
        assert ci["n"] >= 1 and ci["lo"] <= ci["mean"] <= ci["hi"]
    for ci in (r[k][role] for k in ("harmlessness", "over_refusal") for role in ("policy", "baseline")):
        # one answer per check: decided (with its interval) or undecided (P exactly 1/2, counted apart)
        assert ci["n"] + ci["undecided"] == 1 and (ci["n"] == 0 or ci["lo"] <= ci["mean"] <= ci["hi"])
    assert set(r["win_rate"]["by_category"]) == {"harmful", "benign-sensitive", "ordinary"}
    assert (r["kl"]["mean"], r["kl"]["lo"], r["kl"]["hi"], r["kl"]["n"]) == (0.0, 0.0, 0.0, 3)
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert all(x["policy"].strip() and x["baseline"].strip() for x in rows)
    assert all(0 < x[f"{role}_{c}"] < 1 for x in rows for role in ("policy", "baseline") for c in ("refusal", "safe"))
    assert all(x["policy_tokens"] <= 25 and abs(x["logprob_tokens"] - x["policy_tokens"]) <= 2 for x in rows)
    assert "win rate of the policy" in done.stdout
