"""Option scoring with plain transformers (HFEngine.score_options): the labeller's independent reference.

Checked three ways on the default model: against a forward pass written out here (no padding,
full-vocabulary softmax, renormalised over the options), across batch sizes (left padding must
not change a score), and against the vLLM engine (same prompts, float32: equal to 1e-3).
"""

from __future__ import annotations

import math

import pytest

from rlaif.engine.base import ScoreRequest

FRUIT = ({"role": "user", "content": "Which is a fruit? (A) apple (B) car. Answer with the letter."},)


def label_requests(n_pairs: int = 3) -> list[ScoreRequest]:
    """The labeller's own comparison prompts (both orders) for some reference pairs."""
    from pathlib import Path

    from rlaif.pipeline.judge import question, render_conversation
    from rlaif.data.prompts import read_pairs

    pairs = read_pairs(Path(__file__).resolve().parent.parent / "prompts" / "reference-pairs.jsonl", limit=n_pairs)
    q = "Which response is more helpful?"
    reqs = []
    for p in pairs:
        conv = render_conversation(p.prompt)
        for first, second in ((p.response_a, p.response_b), (p.response_b, p.response_a)):
            reqs.append(ScoreRequest(({"role": "user", "content": question(q, conv, first, second, cot=False)},)))
    return reqs


@pytest.fixture(scope="module")
def hf_engine(default_model):
    from rlaif.engine.hf_local import HFEngine

    engine = HFEngine(default_model, dtype="float32", max_model_len=4096, show_progress=False, batch_size=4)
    yield engine
    engine.close()


def reference_scores(engine, req: ScoreRequest, options) -> list[float]:
    """One unpadded forward pass over the whole prompt; log-softmax over the full vocabulary at the
    last position, then renormalised over the options' first tokens."""
    import torch

    ids = engine.encode_scoring_prompt(req)
    opt_ids = engine.option_token_ids(ids, options)
    with torch.inference_mode():
        logits = engine.lm(input_ids=torch.tensor([ids], device=engine.device)).logits[0, -1].double()
    full = torch.log_softmax(logits, dim=-1)[opt_ids]
    return (full - torch.logsumexp(full, dim=-1)).tolist()


def test_score_options_equals_a_plain_forward_pass_and_ignores_batching(hf_engine):
    reqs = label_requests(1) + [ScoreRequest(FRUIT, "The answer is ("), ScoreRequest(FRUIT, "")]
    batched = hf_engine.score_options(reqs, ["A", "B"])
    for req, got in zip(reqs, batched):
        assert got.ok and got.prompt_tokens == len(hf_engine.encode_scoring_prompt(req))
        assert sum(math.exp(x) for x in got.logprobs) == pytest.approx(1, abs=1e-6)
        assert list(got.logprobs) == pytest.approx(reference_scores(hf_engine, req, ["A", "B"]), abs=1e-4)
    # one at a time (no padding at all) gives the same numbers as the left-padded batches
    single = [hf_engine.score_options([r], ["A", "B"])[0] for r in reqs]
    for a, b in zip(batched, single):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # the options are read in their given order
    flipped = hf_engine.score_options(reqs[:2], ["B", "A"])
    for a, b in zip(batched, flipped):
        assert a.logprobs == pytest.approx(b.logprobs[::-1], abs=1e-4)


def test_score_options_errors_match_the_vllm_engine_rules(default_model):
    from rlaif.engine.hf_local import HFEngine

    engine = HFEngine(default_model, dtype="float32", max_model_len=64, show_progress=False)
    try:
        long = ScoreRequest(({"role": "user", "content": "word " * 200},))
        out = engine.score_options([long, ScoreRequest(FRUIT, "Answer: "), ScoreRequest(FRUIT, "(")], ["A", "B"])
        shared = engine.score_options([ScoreRequest(FRUIT, "(")], ["Apple pie", "Apple tart"])
    finally:
        engine.close()
    n = out[0].prompt_tokens
    assert n > 64 and out[0].error == f"prompt is {n} tokens; the model's context is 64" and out[0].logprobs == ()
    # "Answer: " + "A" tokenizes as "Answer", ":", " A": the option merges with the space before it
    assert out[1].error == "option 'A' merges with the text before it; end the prompt so the option starts a token"
    assert out[2].ok and len(out[2].logprobs) == 2
    assert shared[0].error == "options ['Apple pie', 'Apple tart'] share a first token"
    with pytest.raises(ValueError, match="at least one option"):
        HFEngine.score_options(engine, [ScoreRequest(FRUIT)], [])


@pytest.mark.vllm
def test_option_probabilities_equal_vllm_in_float32(hf_engine, vllm_engine):
    """Same model, same prompts: transformers' option probabilities equal vLLM's (float32, 1e-3)."""
    reqs = label_requests(4) + [ScoreRequest(FRUIT, "The answer is ("), ScoreRequest(FRUIT, ""), ScoreRequest(FRUIT, "Answer:\n")]
    cot = [ScoreRequest(r.messages, "Response A is clearer and answers the question.\nAnswer:") for r in label_requests(2)]
    for batch, options in ((reqs, ["A", "B"]), (cot, [" A", " B"])):
        local, ref = hf_engine.score_options(batch, options), vllm_engine.score_options(batch, options)
        for h, v in zip(local, ref):
            assert h.ok and v.ok and h.prompt_tokens == v.prompt_tokens
            assert [math.exp(x) for x in h.logprobs] == pytest.approx([math.exp(x) for x in v.logprobs], abs=1e-3)
    # both refuse the same requests with the same words
    bad = [ScoreRequest(FRUIT, "Answer: "), ScoreRequest(({"role": "user", "content": "x " * 5000},))]
    assert [s.error for s in hf_engine.score_options(bad, ["A", "B"])] == [s.error for s in vllm_engine.score_options(bad, ["A", "B"])]


def test_rl_operations_say_what_the_transformers_backend_cannot_do():
    """The RL operations of the engine protocol: HFEngine refuses sampling for RL and new weights
    with a message naming the backend to use, and never sleeps (like vLLM without sleep mode)."""
    from rlaif.engine.hf_local import HFEngine

    e = object.__new__(HFEngine)  # no model needed to ask
    with pytest.raises(NotImplementedError, match="use the vllm backend"):
        e.sample_tokens([[1, 2]], [0], 4)
    with pytest.raises(NotImplementedError, match="use the vllm backend"):
        e.update_weights([])
    assert e.sleep() is False
    e.wake_up()
