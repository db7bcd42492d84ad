"""Online DPO and GRPO: the pure pieces against values worked out by hand, then both trainers end to
end through a real (tiny) vLLM engine with oracle judges whose answers are known: a content judge that
prefers the response holding the word "good" wherever it is shown, and a position-biased judge that
always prefers slot A. Then one step of each on the default model, through vLLM, with the policy as
its own judge."""
import json
import math
import random
import shutil

from pathlib import Path

import pytest
import torch

from conftest import engine_logps, trainer_logps
from oracles import OracleEngine, content_oracle, position_oracle, shown_responses
from rlaif.engine.config import EngineConfig
from rlaif.pipeline.judge import PairLabel, Pair
from rlaif.train import feedback
from rlaif.train import rl_losses as L

MARK = "good"
ROOT = Path(__file__).resolve().parents[2]


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


# --------------------------------------------------------------------------- pure pieces


def test_pairings():
    assert feedback.pairings(2, "all") == feedback.pairings(2, "circular") == [(0, 1)]
    assert feedback.pairings(4, "all") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    circ = feedback.pairings(5, "circular")
    assert circ == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]
    # every response is shown once as a and once as b
    assert sorted(i for i, _ in circ) == sorted(j for _, j in circ) == list(range(5))
    with pytest.raises(ValueError):
        feedback.pairings(3, "star")


def _judged(i, j, p_a, flags=(), error=None, group=0):
    lab = PairLabel(f"{i}-{j}", p_a, {}, 1.0, p_a, 1, 0.0, tuple(flags), error=error)
    return feedback.Judged(group, i, j, Pair(f"{i}-{j}", (), f"r{i}", f"r{j}"), lab)


def test_win_rates_by_hand():
    # three responses: 0 beats 1 with 0.9, 2 beats 0 with 0.7 (p_a = 0.3), 1 vs 2 a tie, and a failed label
    js = [_judged(0, 1, 0.9), _judged(0, 2, 0.3), _judged(1, 2, 0.5, ("tie",)), _judged(1, 2, 0.99, error="boom")]
    w = feedback.win_rates(3, js)
    assert w == pytest.approx([(0.9 + 0.3) / 2, (0.1 + 0.5) / 2, (0.7 + 0.5) / 2])
    assert feedback.win_rates(2, [_judged(0, 1, 0.7, error="boom")]) == [0.5, 0.5]
    m = feedback.label_metrics(js)
    assert (m["judge/pairs"], m["judge/ties"], m["judge/failed"]) == (4, 1, 1)
    assert m["judge/tie_rate"] == pytest.approx(1 / 3)


def test_choose_pairs_best_worst_and_all():
    from rlaif.train.online_dpo import choose_pairs

    # wins: 0 -> (0.8 + 0.6)/2 = 0.7, 1 -> (0.2 + 0.5)/2 = 0.35, 2 -> (0.4 + 0.5)/2 = 0.45
    js = [_judged(0, 1, 0.8), _judged(0, 2, 0.6), _judged(1, 2, 0.5, ("tie",))]
    assert choose_pairs(3, js, "best-worst") == [(0, 1, pytest.approx(0.8), (0, 0, 1))]
    # all: every pair with a side, oriented by its label; the tie is skipped
    assert choose_pairs(3, js, "all") == [(0, 1, pytest.approx(0.8), (0, 0, 1)), (0, 2, pytest.approx(0.6), (0, 0, 2))]
    # b preferred: the pair is turned round
    assert choose_pairs(2, [_judged(0, 1, 0.25)], "best-worst") == [(1, 0, pytest.approx(0.75), (0, 0, 1))]
    # every pair a tie: nothing to learn
    assert choose_pairs(2, [_judged(0, 1, 0.5, ("tie",))], "best-worst") == []
    assert choose_pairs(3, [_judged(0, 1, 0.5, ("tie",)), _judged(0, 2, 0.5, ("tie",)), _judged(1, 2, 0.5, ("tie",))], "all") == []


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    a = L.group_advantages(r, "mean", scale=False)
    torch.testing.assert_close(a[0], torch.tensor([-2.0, -1.0, 0.0, 3.0], dtype=torch.float64))
    assert a[1].abs().max() == 0  # a group of equal rewards teaches nothing
    # leave-one-out: r_i minus the mean of the other three
    loo = torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3], dtype=torch.float64)
    torch.testing.assert_close(L.group_advantages(r, "rloo", scale=False)[0], loo)
    # scaled by the (Bessel) standard deviation of the group: sd of (1, 2, 3, 6) = sqrt(14 / 3)
    sd = math.sqrt(14 / 3)
    torch.testing.assert_close(L.group_advantages(r, "mean", scale=True, eps=0.0)[0], torch.tensor([-2.0, -1.0, 0.0, 3.0], dtype=torch.float64) / sd)
    assert L.group_advantages(r, "rloo", scale=True)[1].abs().max() == 0
    with pytest.raises(ValueError):
        L.group_advantages(r, "median")


def test_group_advantages_default_keeps_the_rewards_scale():
    """Dr. GRPO (Liu et al. 2025): no division by the group's standard deviation by default. Rewards
    0.5 +- 0.001 (a judge that cannot tell the responses apart) keep advantages of 0.001 instead of
    being blown up to about +-1."""
    r = torch.tensor([[0.501, 0.499, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(L.group_advantages(r), torch.tensor([[0.001, -0.001, 0.0, 0.0]], dtype=torch.float64))
    scaled = L.group_advantages(r, scale=True)  # sd = sqrt(2e-6 / 3) = 8.16e-4
    assert float(scaled.abs().max()) == pytest.approx(0.001 / (math.sqrt(2e-6 / 3) + 1e-4), rel=1e-9)
    assert float(scaled.abs().max()) > 1.0


def test_kl_penalty_loss_is_k3_and_vanishes_at_the_reference():
    logp = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.2), -5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = L.kl_penalty_loss(logp, ref, mask)
    # token 0: r = 1/2, k3 = r - 1 - log r = -0.5 + ln 2; token 1: r = 1, k3 = 0; token 2 is masked
    assert loss.item() == pytest.approx((-0.5 + math.log(2)) / 2, rel=1e-12)
    loss.backward()
    # d k3 / d logp = 1 - r
    torch.testing.assert_close(logp.grad, torch.tensor([[0.5 / 2, 0.0, 0.0]], dtype=torch.float64))


def test_config_validation():
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.online_dpo import OnlineDPOConfig

    with pytest.raises(ValueError, match="samples_per_prompt"):
        OnlineDPOConfig(data="x", samples_per_prompt=1)
    with pytest.raises(ValueError, match="loss"):
        OnlineDPOConfig(data="x", loss="rdpo")
    with pytest.raises(ValueError, match="grad_accum must stay 1"):  # it would be silently ignored
        OnlineDPOConfig(data="x", grad_accum=2)
    assert OnlineDPOConfig(data="x", loss="simpo").beta == 2.0 and OnlineDPOConfig(data="x", loss="ipo").length_average
    with pytest.raises(ValueError, match="needs a reward"):
        GRPOConfig(data="x", judge_weight=0.0)
    with pytest.raises(ValueError, match="multiple"):
        GRPOConfig(data="x", rollout_batch_size=3, samples_per_prompt=3, batch_size=4)
    with pytest.raises(ValueError, match="engine.backend"):
        OnlineDPOConfig(data="x", judge=feedback.JudgeConfig(engine=EngineConfig(backend="nope")))
    with pytest.raises(ValueError, match="judge.engine.backend at vllm"):
        feedback.JudgeConfig(model="policy", engine=EngineConfig(backend="fake"))
    with pytest.raises(ValueError, match="judge.seed"):  # the run's seed seeds the judge
        feedback.JudgeConfig(seed=3)
    with pytest.raises(ValueError, match="in-process vLLM"):
        OnlineDPOConfig(data="x", engine=EngineConfig(backend="fake"))


def test_train_command_refuses_other_rollout_backends(tmp_path, capsys):
    from rlaif.cli import main

    for kind in ("online-dpo", "grpo"):
        rc = main(["train", kind, "engine.backend=fake", f"data={ROOT / 'prompts' / 'rlaif-prompts.jsonl'}", f"runs_dir={tmp_path}"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "in-process vLLM engine" in err and "Traceback" not in err


# ------------------------------------------------------------ real vLLM, tiny model


def _cfg(kind, model, data, runs, name, *extra):
    from rlaif.train.config import load_config
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.online_dpo import OnlineDPOConfig

    cls = OnlineDPOConfig if kind == "online_dpo" else GRPOConfig
    return load_config(cls, None, [
        f"model={model}", f"data={data}", f"runs_dir={runs}", f"name={name}", "tensorboard=false",
        "rollout_batch_size=16", "samples_per_prompt=4", "batch_size=8", "max_new_tokens=12", "max_length=64",
        "max_prompt_length=32", "lr=3e-3", "lr_schedule=constant", "warmup_ratio=0", "judge.ensemble=2", *extra,
    ])


def _recipe(kind):
    from rlaif.train import grpo, online_dpo

    return online_dpo if kind == "online_dpo" else grpo


def _log(runs, name):
    return [json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines()]


def _marker_share(engine, tok, n=96, seed=1000):
    """The share of fresh samples (new prompts and seeds) that hold the marker: measured here, from the engine."""
    rng = random.Random(seed)
    prompts = [[{"role": "user", "content": " ".join(f"w{rng.randrange(120)}" for _ in range(4))}] for _ in range(n)]
    ids = [engine.encode_chat(p) for p in prompts]
    samples = engine.sample_tokens(ids, [seed + i for i in range(n)], 12, 1.0)
    return sum(MARK in x.text.split() for x in samples) / n


def _trainer_matches_engine(s, engine):
    prompt = engine.encode_chat([{"role": "user", "content": "w1 w2"}])
    seq = prompt + engine.tokenizer.encode("w3 good w4", add_special_tokens=False)
    s.policy.eval()
    trainer = trainer_logps(s.policy, seq, len(prompt))
    got = engine_logps(engine, seq, len(prompt))
    assert float((got - trainer).abs().max()) < 1e-3


@pytest.mark.vllm
@pytest.mark.parametrize("kind,extra", [("online_dpo", ("pairs=all",)), ("grpo", ("kl_coef=0.05",))])
def test_preference_rate_rises_with_a_content_judge(engine, tiny_chat, prompt_file, tmp_path, kind, extra):
    recipe = _recipe(kind)
    cfg = _cfg(kind, tiny_chat, prompt_file, tmp_path, "learn", "max_steps=8", "eval_every=4", "probe_size=16", *extra)
    s = recipe.setup(cfg, engine=engine, judge=content_oracle(2.0, marker=MARK))
    before = _marker_share(engine, s.tokenizer)
    recipe.train(s)
    after = _marker_share(engine, s.tokenizer)
    _trainer_matches_engine(s, engine)  # the last sync left the engine serving the trainer's weights
    recipe.save(s)
    recipe.cleanup(s)
    log = _log(tmp_path, "learn")
    train = [r for r in log if "train/kl" in r]
    probes = [r["probe/win_rate"] for r in log if "probe/win_rate" in r]
    print(kind, "marker share", before, "->", after, "probe", probes, "kl", [round(r["train/kl"], 2) for r in train])
    assert before < 0.25 and after > before + 0.25
    assert probes[-1] > 0.7  # the judge prefers the trained policy's samples to the starting policy's
    assert max(r["train/kl"] for r in train) < 20.0
    assert max(r["train/rollout/logprob_gap_max"] for r in train) < 1e-3
    assert all(r["train/judge/requests"] > 0 and r["train/judge/prompt_tokens"] > 0 for r in train)
    # the judged pairs are left as a preference dataset a trainer reads
    from rlaif.train.data import load_rows

    rows = load_rows(str(tmp_path / "learn"), "preference")
    assert len(rows) == sum(r["train/judge/pairs"] - r["train/judge/ties"] for r in train) > 0
    assert all(MARK in r["chosen"][0]["content"].split() and MARK not in r["rejected"][0]["content"].split() for r in rows)


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["online_dpo", "grpo"])
def test_ties_are_skipped_and_counted(engine, tiny_chat, prompt_file, tmp_path, kind):
    """With the content judge a pair is a tie exactly when both or neither response holds the marker;
    the judge's own requests say which pairs it saw."""
    recipe = _recipe(kind)
    judge = content_oracle(2.0, marker=MARK)
    cfg = _cfg(kind, tiny_chat, prompt_file, tmp_path, "ties", "max_steps=2", "probe_size=0", "samples_per_prompt=3",
               "rollout_batch_size=8", "batch_size=4", "lr=1e-2", "judge_pairs=all" if kind == "grpo" else "pairs=best-worst")
    s = recipe.setup(cfg, engine=engine, judge=judge)
    recipe.train(s)
    recipe.save(s)
    recipe.cleanup(s)
    log = [r for r in _log(tmp_path, "ties") if "train/judge/ties" in r]
    # the oracle's calls, in order: one batch per step; 2 principles x 2 orders per pair, the direct order first
    sizes = [n for desc, n in judge.calls if desc.startswith("judge")]
    assert len(sizes) == len(log) == 2
    start = 0
    for step, (rec, n) in enumerate(zip(log, sizes)):
        seen = judge.scored[start : start + n : 4]
        start += n
        identical = 8 * 3 - len(seen)  # identical responses are a tie without a call
        ties = identical + sum((MARK in a.split()) == (MARK in b.split()) for a, b in seen)
        assert rec["train/judge/pairs"] == 8 * 3 and rec["train/judge/identical"] == identical
        assert rec["train/judge/ties"] == ties and rec["train/judge/tie_rate"] == pytest.approx(ties / 24)
        rows = [json.loads(l) for l in (tmp_path / "ties" / "pairs" / f"{step:05d}.jsonl").read_text().splitlines()]
        assert len(rows) == 24 - ties and all(r["chosen_prob"] == pytest.approx(sig(2.0)) for r in rows)
        if kind == "online_dpo":  # at most one pair per prompt trains, and never a tie
            assert rec.get("train/pairs_trained", 0) == sum(r["trained"] for r in rows) <= 8


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["online_dpo", "grpo"])
def test_a_position_biased_judge_gives_no_signal_once_both_orders_are_used(engine, tiny_chat, prompt_file, tmp_path, kind):
    recipe = _recipe(kind)
    # GRPO: all pairs (a circle shows every response once in each slot, which would hide the bias even in
    # one order), and no KL term, whose gradient at the reference is rounding noise that Adam would amplify
    extra = ("judge_pairs=all", "kl_coef=0") if kind == "grpo" else ()

    def run(name, both):
        cfg = _cfg(kind, tiny_chat, prompt_file, tmp_path, name, "max_steps=2", "probe_size=0",
                   f"judge.both_orders={str(both).lower()}", *extra)
        s = recipe.setup(cfg, engine=engine, judge=position_oracle(2.0))
        start = {k: v.clone() for k, v in s.policy.state_dict().items()}
        recipe.train(s)
        moved = max(float((v - start[k]).abs().max()) for k, v in s.policy.state_dict().items())
        recipe.cleanup(s)
        return moved, [r for r in _log(tmp_path, name) if "train/judge/ties" in r]

    moved, log = run("both", True)
    assert moved == 0.0  # not a single weight changed
    assert all(r["train/judge/tie_rate"] == 1.0 for r in log)
    assert all(r["train/judge/order_agreement"] == 0.0 for r in log)  # the two orders never agree
    moved_one, log_one = run("one", False)
    assert moved_one > 1e-4 and all(r["train/judge/tie_rate"] == 0.0 for r in log_one)


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["online_dpo", "grpo"])
def test_resume_repeats_the_uninterrupted_run(engine, tiny_chat, prompt_file, tmp_path, kind):
    recipe = _recipe(kind)

    def run(name):
        cfg = _cfg(kind, tiny_chat, prompt_file, tmp_path, name, "max_steps=2", "save_every=1", "keep_checkpoints=3",
                   "eval_every=1", "probe_size=8", "rollout_batch_size=8", "grpo_epochs=2" if kind == "grpo" else "pairs=all")
        s = recipe.setup(cfg, engine=engine, judge=content_oracle(2.0, marker=MARK))
        recipe.train(s)
        recipe.save(s)
        recipe.cleanup(s)
        return _log(tmp_path, name)

    a = run("a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000002")
    b = run("b")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    keys = ["train/loss", "train/kl", "train/entropy", "train/judge/ties", "probe/win_rate", "probe/soft_win_rate"]
    for ra, rb in zip(a, b):
        for k in keys:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), k
    for step in (0, 1):
        assert (tmp_path / "a" / "pairs" / f"{step:05d}.jsonl").read_text() == (tmp_path / "b" / "pairs" / f"{step:05d}.jsonl").read_text()


def good_share(prompts, responses):
    return torch.tensor([sum(w == MARK for w in r.split()) / max(1, len(r.split())) for r in responses])


@pytest.mark.vllm
def test_grpo_reward_is_the_weighted_sum_of_its_parts(engine, tiny_chat, prompt_file, tmp_path):
    from rlaif.train import grpo, online

    cfg = _cfg("grpo", tiny_chat, prompt_file, tmp_path, "sum", "max_steps=1", "probe_size=0", "judge_weight=0.5",
               "reward_fn_weight=2.0", "judge_pairs=circular", "missing_eos_penalty=0.25")
    s = grpo.setup(cfg, engine=engine, judge=content_oracle(2.0, marker=MARK), reward_fn=good_share)
    recs, samples = online.sample(s, 0, "grpo")
    total, m, judged = grpo.rewards(s, 0, recs, samples)
    grpo.cleanup(s)
    texts = [x.text for x in samples]
    # the content judge's mean win probability in a circle, worked out from the texts alone
    want = []
    for g in range(16):
        group = texts[4 * g : 4 * g + 4]
        has = [MARK in t.split() for t in group]
        p = lambda i, j: sig(2.0 * (has[i] - has[j]))  # noqa: E731
        want += [(p(i, (i + 1) % 4) + p(i, (i - 1) % 4)) / 2 for i in range(4)]
    fn = good_share(None, texts)
    cut = torch.tensor([0.0 if x.ended else 0.25 for x in samples])
    torch.testing.assert_close(total, 0.5 * torch.tensor(want) + 2.0 * fn - cut, rtol=1e-6, atol=1e-6)
    assert m["judge/pairs"] == 64 and len(judged) == 16


class NoiseOracle(OracleEngine):
    """A judge that cannot tell responses apart: logit P(A) is a fixed pseudo-random number in
    [-scale, scale] for each ordered pair of texts, so P(A) = 1/2 +- scale / 4."""

    scale: float = 0.004

    def _score(self, req, options):
        import hashlib

        first, second = shown_responses(req.messages[-1]["content"])
        self.scored.append((first, second))
        u = int.from_bytes(hashlib.sha256(f"{first}\0{second}".encode()).digest()[:8], "big") / 2.0**64
        z = self.scale * (2.0 * u - 1.0)
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


@pytest.mark.vllm
def test_grpo_default_does_not_blow_judge_noise_up_to_full_size_gradients(engine, tiny_chat, prompt_file, tmp_path):
    """With a judge that answers 1/2 plus noise of about 0.001, GRPO's default (Dr. GRPO: advantages
    not divided by the group's standard deviation) gives a policy gradient whose norm before the
    optimiser step is at most 1% of the norm with scale_rewards: true on the same batch (same seeds,
    same samples, same judge answers). The gradient norm, not a weight change, is what tells them apart:
    AdamW steps by about lr whatever the gradient's scale."""
    from rlaif.train import grpo

    norms, rewards = {}, {}
    for name, extra in (("default", ()), ("scaled", ("scale_rewards=true",))):
        # 4 prompts x 4 responses = 16 = batch_size x grad_accum: one optimiser step, taken from the
        # starting policy; no KL term (its gradient at the reference is rounding noise)
        cfg = _cfg("grpo", tiny_chat, prompt_file, tmp_path, f"noise-{name}", "max_steps=1", "probe_size=0",
                   "rollout_batch_size=4", "grad_accum=2", "kl_coef=0", *extra)
        s = grpo.setup(cfg, engine=engine, judge=NoiseOracle())
        m = grpo.iteration(s, 0)
        grpo.cleanup(s)
        norms[name], rewards[name] = m["train/grad_norm"], (m["train/reward"], m["train/reward_std"])
    print(norms, rewards)
    assert rewards["default"] == rewards["scaled"]  # the same batch, judged the same
    assert 0 < rewards["default"][1] < 0.005  # the rewards differ, by the judge's noise only
    assert 0 < norms["default"] <= 0.01 * norms["scaled"]


# ------------------------------------------------------------ real vLLM, the default model


@pytest.mark.vllm
@pytest.mark.slow
def test_one_step_of_each_on_the_default_model_keeps_sampler_and_trainer_in_sync(tmp_path):
    """The default model through vLLM, judging its own samples (judge.model: policy): one step of each
    trainer; the engine's log-probs of what it sampled, and after the sync of a given answer, match
    the trainer's within 1e-3."""
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.models.model_zoo import resolve_model

    path = str(getattr(resolve_model("default"), "path", resolve_model("default")))
    engine = VLLMEngine(path, EngineConfig(max_model_len=1024, kv_cache_gib=0.5, dtype="float32"), show_progress=False)
    try:
        for kind, extra in (("online_dpo", ("samples_per_prompt=2",)), ("grpo", ("samples_per_prompt=2", "batch_size=4"))):
            recipe = _recipe(kind)
            cfg = _cfg(kind, path, ROOT / "prompts" / "rlaif-prompts.jsonl", tmp_path, kind, "max_steps=1", "rollout_batch_size=2",
                       "max_new_tokens=16", "max_length=512", "max_prompt_length=256", "lr=1e-5", "probe_size=0",
                       "judge.model=policy", "judge.ensemble=1", *extra)
            s = recipe.setup(cfg, engine=engine)
            m = recipe.train(s)
            assert m["train/rollout/logprob_gap_max"] < 1e-3 and m["train/judge/requests"] == 2 * 2
            _trainer_matches_engine(s, engine)
            recipe.cleanup(s)
    finally:
        engine.close()


@pytest.mark.vllm
def test_a_served_judge_is_asked_through_the_openai_backend(engine, tiny_chat, prompt_file, tmp_path):
    """judge.engine.backend: openai: every comparison goes to the named model on the server, both orders and
    each principle; the oracle server's marker never occurs in the tiny model's words, so every pair is a tie."""
    from fixtures_server import OracleServer

    from rlaif.train import online_dpo

    with OracleServer(("other", "judge-model")) as srv:  # not the first model: the name must be passed
        cfg = _cfg("online_dpo", tiny_chat, prompt_file, tmp_path, "served", "max_steps=1", "probe_size=0",
                   "samples_per_prompt=2", "rollout_batch_size=4", "judge.engine.backend=openai", f"judge.engine.base_url={srv.url}",
                   "judge.model=judge-model")
        s = online_dpo.setup(cfg, engine=engine)
        m = online_dpo.train(s)
        online_dpo.cleanup(s)
        score = srv.requests("score")
    assert len(score) == 4 * 2 * 2 and {b["model"] for b in score} == {"judge-model"}
    assert m["train/judge/requests"] == 16 and m["train/judge/tie_rate"] == 1.0 and m.get("train/pairs_trained") == 0


@pytest.mark.vllm
@pytest.mark.parametrize("kind,stop", [("online-dpo", "within"), ("grpo", "breaker")])
def test_a_judge_that_stops_answering_checkpoints_and_stops_and_the_rerun_completes(engine, tiny_chat, prompt_file, tmp_path,
                                                                                   monkeypatch, capsys, kind, stop):
    """Through ``rlaif train``: a served judge that answers until the first iteration is logged and then only 500. Its
    requests give up, the step judges the failed pairs again (``judge.retries``) and, still failing (or
    stopped by the engine's breaker: 20 requests in a row), the run checkpoints the last finished
    iteration and exits with status 4 and one line. The same command against the judge restarted on
    the same port completes, and the run equals one whose judge never failed (GRPO with a probe after
    every iteration)."""
    from fixtures_server import FaultyOracle, OracleServer

    from rlaif.cli import main
    from rlaif.engine.failures import FAILED_EXIT
    from rlaif.train import checkpoint, online

    class Shared:  # the module's engine; the run must not close it
        def __init__(self, e):
            self.e = e

        def __getattr__(self, name):
            return getattr(self.e, name)

        def close(self):
            pass

    monkeypatch.setattr(online, "make_engine", lambda cfg, path: Shared(engine))
    breaks: list = []  # the server that breaks once an iteration's metrics are logged
    log = checkpoint.MetricsLog.log

    def log_then_break(self, step, values):
        log(self, step, values)
        for server in breaks:
            server.break_now()

    monkeypatch.setattr(checkpoint.MetricsLog, "log", log_then_break)
    probe = ["probe_size=4", "eval_every=1"] if kind == "grpo" else ["probe_size=0"]

    def train(name, url):
        return main(["train", kind, f"model={tiny_chat}", f"data={prompt_file}", f"runs_dir={tmp_path}", f"name={name}",
                     "tensorboard=false", "rollout_batch_size=4", "samples_per_prompt=2", "batch_size=8", "max_new_tokens=12",
                     "max_length=64", "max_prompt_length=32", "lr=3e-3", "lr_schedule=constant", "warmup_ratio=0",
                     "max_steps=2", "save_every=1", *probe, "judge.ensemble=2", "judge.model=judge", "judge.retries=1",
                     "judge.engine.backend=openai", f"judge.engine.base_url={url}", "judge.engine.max_retries=1",
                     "judge.engine.request_timeout_s=2", *(["judge.engine.max_consecutive_failures=0"] if stop == "within" else [])])

    with FaultyOracle("500", after=10**6, models=("judge",), marker=MARK) as bad:
        breaks.append(bad)
        assert train("r", bad.url) == FAILED_EXIT
        breaks.clear()
        port, answered = bad.port, bad.answered
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif:")]
    assert len(lines) == 1 and lines[0].startswith("rlaif: stopped early:") and "run the same command again" in lines[0]
    assert ("more tries within the step" if stop == "within" else "20 requests in a row") in lines[0]
    assert "checkpointed at iteration 1" in lines[0]
    assert {m["step"] for m in _log(tmp_path, "r")} == {1}  # nothing of the iteration that failed
    with OracleServer(("judge",), port=port, marker=MARK) as good:
        assert train("r", good.url) == 0
        asked = len(good.requests("score"))
    with OracleServer(("judge",), marker=MARK) as fresh:
        assert train("fresh", fresh.url) == 0
        assert answered + asked == len(fresh.requests("score"))  # nothing judged twice
    a, b = _log(tmp_path, "fresh"), _log(tmp_path, "r")
    assert [m["step"] for m in a] == [m["step"] for m in b] == ([1, 1, 2, 2] if kind == "grpo" else [1, 2])
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ("train/loss", "train/kl", "train/entropy", "train/judge/ties", "train/judge/failed", "probe/win_rate",
                  "probe/soft_win_rate"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), k
    for step in (0, 1):
        assert (tmp_path / "fresh" / "pairs" / f"{step:05d}.jsonl").read_text() == (tmp_path / "r" / "pairs" / f"{step:05d}.jsonl").read_text()
