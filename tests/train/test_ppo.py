"""PPO: the pure pieces against hand-derived values and plain oracles, then the recipe end to
end through a real (tiny) vLLM engine: weight sync, one iteration, exact resume, and a
learning test with a programmatic reward."""
import json
import math
import random
import shutil

import pytest
import torch

from conftest import engine_logps, trainer_logps
from rlaif.engine.base import TokenSample
from rlaif.train import rl_losses as L
from rlaif.train import rollout

# --------------------------------------------------------------------- KL and rewards


def test_kl_estimators_by_hand():
    # pi(a) = 1/2, ref(a) = 1/4: log r = log(ref/pi) = -log 2
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert L.kl_estimate(lp, ref, "k1").item() == pytest.approx(ln2, rel=1e-6)
    assert L.kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * ln2**2, rel=1e-6)
    assert L.kl_estimate(lp, ref, "k3").item() == pytest.approx(-0.5 + ln2, rel=1e-6)  # (r - 1) - log r, r = 1/2
    same = L.kl_estimate(lp, lp, "k3")
    assert same.item() == 0.0 and L.kl_estimate(lp, lp, "k1").item() == 0.0
    with pytest.raises(ValueError):
        L.kl_estimate(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_kl_estimates():
    """E_pi[k1] = E_pi[k3] = KL(pi || ref), exactly, when the expectation is taken over all tokens."""
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    kl = float((pi * (pi / ref).log()).sum())
    for kind in ("k1", "k3"):
        est = L.kl_estimate(pi.log()[None], ref.log()[None], kind)[0]
        assert float((pi * est).sum()) == pytest.approx(kl, rel=1e-12)


# Two small categorical distributions, far enough apart that an estimator of the wrong
# divergence misses by much more than the sampling error.
P = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
Q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
N_SAMPLES = 200_000


def _exact_kl(p, q):
    return float((p * (p / q).log()).sum())


def _sampled_mean_close(per_sample, exact):
    """The sample mean lies within 5 standard errors of the exact value."""
    x = per_sample.reshape(-1)
    se = float(x.std()) / math.sqrt(x.numel())
    assert abs(float(x.mean()) - exact) < 5 * se, (float(x.mean()), exact, se)


def _draw(p, seed):
    return torch.multinomial(p, N_SAMPLES, replacement=True, generator=torch.Generator().manual_seed(seed))


def test_ppo_approx_kl_estimates_kl_old_to_new_from_old_samples():
    """Tokens drawn from pi_old: approx_kl must converge to the exact KL(pi_old || pi).

    The mirrored estimator (ratio pi_old / pi) has mean sum pi_old^2 / pi - 1 - KL, here
    1.2 above the KL, against a standard error of about 0.005."""
    for old, new in ((P, Q), (Q, P)):
        a = _draw(old, 1)[None]
        _, m = L.policy_loss(new.log()[a], old.log()[a], torch.zeros(a.shape, dtype=torch.float64),
                             torch.ones(a.shape), clip_eps=0.2)
        # the metric is a mean over tokens; its standard error is that of the per-token k3
        r = new[a] / old[a]
        se = float((r - 1 - r.log()).std()) / math.sqrt(N_SAMPLES)
        exact = _exact_kl(old, new)
        assert abs(m["approx_kl"].item() - exact) < 5 * se, (m["approx_kl"].item(), exact, se)
        mirrored = float((old**2 / new).sum()) - 1 - exact
        assert abs(mirrored - exact) > 50 * se  # the test can tell the two apart


def test_kl_penalty_estimators_estimate_kl_policy_to_ref_from_policy_samples():
    """The reward's KL penalty: tokens drawn from pi, k1 and k3 converge to KL(pi || ref)."""
    for pi, ref in ((P, Q), (Q, P)):
        a = _draw(pi, 2)[None]
        for kind in ("k1", "k3"):
            _sampled_mean_close(L.kl_estimate(pi.log()[a], ref.log()[a], kind), _exact_kl(pi, ref))
        # k2 = (log r)^2 / 2 is biased by design; it is its own exact expectation here
        _sampled_mean_close(L.kl_estimate(pi.log()[a], ref.log()[a], "k2"),
                            float((pi * 0.5 * (ref / pi).log() ** 2).sum()))
        # the mirrored k3 (ratio pi / ref) would converge to sum pi^2 / ref - 1 - KL, far away
        k3 = L.kl_estimate(pi.log()[a], ref.log()[a], "k3")
        se = float(k3.std()) / math.sqrt(N_SAMPLES)
        assert abs(float((pi**2 / ref).sum()) - 1 - 2 * _exact_kl(pi, ref)) > 50 * se


def test_token_rewards_put_score_on_last_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = L.token_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 0.85], [1.75, 0.0, 0.0]]), rtol=1e-6, atol=1e-7)


def test_length_limit_penalty():
    out = L.length_limit_penalty(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), 0.5)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.5]))


def test_adaptive_kl_controller_by_hand():
    # Ziegler et al. 2019: e = clip(KL/target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon
    assert L.adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=10000, n_steps=100) == pytest.approx(0.1 * 1.002, rel=1e-9)
    assert L.adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=10000, n_steps=100) == pytest.approx(0.1 * 0.999, rel=1e-9)
    assert L.adaptive_kl_coef(0.1, kl=6.0, target=6.0, horizon=10000, n_steps=100) == pytest.approx(0.1, rel=1e-12)


def test_adaptive_kl_controller_drives_the_kl_to_its_target():
    """Behaviour of Ziegler et al. 2019's controller on a policy whose KL falls as the coefficient
    rises (KL = 0.6 / beta: at the start, beta = 0.05, the KL of 12 is twice the target 6): beta
    must rise while the KL is above the target and settle where the KL meets it (beta = 0.1)."""
    coef, target = 0.05, 6.0
    kls = []
    for _ in range(4000):
        kl = 0.6 / coef
        kls.append(kl)
        coef = L.adaptive_kl_coef(coef, kl, target, horizon=10000, n_steps=256)
    assert kls[1] < kls[0] and coef == pytest.approx(0.1, rel=1e-3) and kls[-1] == pytest.approx(target, rel=1e-3)
    # from below: KL 3 at beta 0.2, the coefficient falls back to 0.1
    coef = 0.2
    for _ in range(4000):
        coef = L.adaptive_kl_coef(coef, 0.6 / coef, target, horizon=10000, n_steps=256)
    assert coef == pytest.approx(0.1, rel=1e-3)


def test_masked_stats_match_torch_on_the_unmasked_elements():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64) * 2 + 1
    mask = torch.rand(4, 7, generator=g) > 0.3
    sel = x[mask]
    assert float(L.masked_mean(x, mask)) == pytest.approx(float(sel.mean()), rel=1e-12)
    assert float(L.masked_var(x, mask)) == pytest.approx(float(sel.var(unbiased=True)), rel=1e-12)
    assert float(L.masked_var(x, mask, unbiased=False)) == pytest.approx(float(sel.var(unbiased=False)), rel=1e-12)
    w = L.masked_whiten(x, mask, eps=0.0)
    torch.testing.assert_close(w[mask], (sel - sel.mean()) / sel.std(), rtol=1e-12, atol=1e-12)
    assert float(w[~mask].abs().max()) == 0.0


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased variance 1 over the unmasked values; the masked value is ignored
    torch.testing.assert_close(L.masked_whiten(x, m), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(L.masked_whiten(x, m, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]), rtol=1e-6, atol=1e-6)


def test_entropy_from_logits():
    # p = (1/4, 3/4): H = 1/4 ln 4 + 3/4 ln(4/3)
    h = L.entropy_from_logits(torch.tensor([[[0.0, math.log(3.0)]]]))
    assert h.item() == pytest.approx(0.25 * math.log(4) + 0.75 * math.log(4 / 3), rel=1e-6)
    assert L.entropy_from_logits(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7), rel=1e-6)


def test_entropy_from_logits_matches_trl():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 4
    torch.testing.assert_close(L.entropy_from_logits(logits), trl_utils.entropy_from_logits(logits), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------- GAE


def test_gae_by_hand():
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    m = torch.ones(1, 3)
    adv, ret = L.gae(r, v, m, gamma=0.9, lam=0.8)
    # delta = (1 + .9*1 - .5, 0 + .9*1.5 - 1, 2 + 0 - 1.5) = (1.4, .35, .5)
    # A2 = .5; A1 = .35 + .72 * .5 = .71; A0 = 1.4 + .72 * .71 = 1.9112
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5]]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0]]), rtol=1e-6, atol=1e-7)


def test_gae_limits():
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    m = torch.ones(1, 3)
    # gamma = lam = 1: returns are the reward-to-go (3, 2, 2), advantages reward-to-go minus V
    adv, ret = L.gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[3.0, 2.0, 2.0]]))
    torch.testing.assert_close(adv, torch.tensor([[2.5, 1.0, 0.5]]))
    # lam = 1: returns are the discounted reward-to-go (1 + .9 * 1.8, .9 * 2, 2)
    _, ret = L.gae(r, v, m, 0.9, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[2.62, 1.8, 2.0]]), rtol=1e-6, atol=1e-7)
    # lam = 0: the advantage is the one-step TD error
    adv, _ = L.gae(r, v, m, 0.9, 0.0)
    torch.testing.assert_close(adv, torch.tensor([[1.4, 0.35, 0.5]]), rtol=1e-6, atol=1e-7)


def _gae_loop(rewards, values, lengths, gamma, lam):
    """Plain Python oracle: per row, per step, over the row's own tokens only."""
    adv = [[0.0] * len(rewards[0]) for _ in rewards]
    for b, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            nv = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * nv - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
    return adv


def _gae_closed_form(rewards, values, lengths, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, summed explicitly."""
    adv = [[0.0] * len(rewards[0]) for _ in rewards]
    for b, n in enumerate(lengths):
        deltas = [rewards[b][t] + gamma * (values[b][t + 1] if t + 1 < n else 0.0) - values[b][t] for t in range(n)]
        for t in range(n):
            adv[b][t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_loop_and_closed_form_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    r = torch.randn(B, T, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, generator=g, dtype=torch.float64)
    adv, ret = L.gae(r * mask + 7.0 * (1 - mask), v * mask - 3.0 * (1 - mask), mask, gamma, lam)  # garbage in padding
    loop = torch.tensor(_gae_loop(r.tolist(), v.tolist(), lengths, gamma, lam), dtype=torch.float64)
    closed = torch.tensor(_gae_closed_form(r.tolist(), v.tolist(), lengths, gamma, lam), dtype=torch.float64)
    torch.testing.assert_close(adv, loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adv, closed, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ret, (loop + v) * mask, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ PPO losses


def test_policy_loss_clipping_by_hand():
    # four tokens: ratio 1.5 / 0.5, advantage +1 / -1, eps 0.2
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)
    old = torch.zeros_like(ratio)
    logp = ratio.log().requires_grad_(True)
    loss, m = L.policy_loss(logp, old, adv, torch.ones_like(adv), clip_eps=0.2)
    # per token max(-A rho, -A clip(rho)): (-1.2, 1.5, -0.5, 0.8); mean 0.15
    assert loss.item() == pytest.approx(0.15, rel=1e-12)
    assert m["clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # clipped tokens get no gradient; the others d(-A rho)/d log pi = -A rho, over 4 tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0]], dtype=torch.float64))


def test_policy_loss_at_ratio_one_is_minus_advantage():
    adv = torch.tensor([[2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    lp = torch.zeros(1, 3, requires_grad=True)
    loss, m = L.policy_loss(lp, torch.zeros(1, 3), adv, mask, 0.2)
    assert loss.item() == pytest.approx(-0.5)  # -(2 - 1) / 2 tokens; the masked token is ignored
    assert m["clipfrac"].item() == 0.0 and m["approx_kl"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, 0.5, 0.0]]))


def test_value_loss_clipping_by_hand():
    v_old = torch.tensor([[0.0, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.1, -0.5]], requires_grad=True)
    ret = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = L.value_loss(v, v_old, ret, torch.ones(1, 3), clip_eps=0.2)
    # token 0: clip to .2, errors .25 / .64 -> .32 (clipped: no gradient)
    # token 1: inside the clip, .81 -> .405;  token 2: clip to -.2, errors .25 / .04 -> .125
    assert loss.item() == pytest.approx((0.32 + 0.405 + 0.125) / 3, rel=1e-6)
    assert m["clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, (0.1 - 1.0) / 3, -0.5 / 3]]), rtol=1e-6, atol=1e-7)


def _trl_grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta, clip_eps):
    """TRL's GRPOTrainer._compute_loss with loss_type="dapo" (its token-level aggregation over the
    batch), driven with a fake trainer whose model returns the per-token log-probs we choose."""
    from collections import defaultdict
    from types import SimpleNamespace

    grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    ident = lambda x, **kw: x  # noqa: E731
    B, T = logp.shape
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **kw: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1), loss_type="dapo",
        epsilon_low=clip_eps, epsilon_high=clip_eps, use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        accelerator=SimpleNamespace(num_processes=1, reduce=ident, gather=ident, gather_for_metrics=ident),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": advantages, "old_per_token_logps": old_logp, "ref_per_token_logps": ref_logp,
        "num_items_in_batch": mask.sum(),
    }
    return grpo.GRPOTrainer._compute_loss(fake, None, inputs), fake._metrics["train"]


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_and_kl_losses_match_trl_grpo_dapo(beta):
    """policy_loss + beta * kl_penalty_loss, both divided by the batch's response tokens, is TRL's GRPO
    loss with loss_type="dapo" (DAPO's token-level aggregation): same value, same gradient, same share
    of clipped tokens. Ratios reach well past the clip range on both sides, advantages of both signs."""
    g = torch.Generator().manual_seed(8)
    B, T = 4, 6
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in (6, 3, 1, 5)], dtype=torch.float64)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = (old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0], dtype=torch.float64)
    trl_loss, trl_metrics = _trl_grpo_loss(logp, old, ref, adv, mask, beta, 0.2)
    (trl_grad,) = torch.autograd.grad(trl_loss, logp)
    pl, pm = L.policy_loss(logp, old, adv[:, None] * mask, mask, 0.2)
    kl, km = L.kl_penalty_loss(logp, ref, mask)
    ours = pl + beta * kl
    (our_grad,) = torch.autograd.grad(ours, logp)
    assert float(ours.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-10)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-10, atol=1e-12)
    assert float(pm["clipfrac"]) == pytest.approx(trl_metrics["clip_ratio/region_mean"][-1], rel=1e-6)  # TRL: float32
    assert 0 < float(pm["clipfrac"]) < 1  # some tokens clipped, some not: the comparison covers both
    if beta:
        assert float(km["kl_k3"]) == pytest.approx(trl_metrics["kl"][-1], rel=1e-10)


def test_losses_accumulate_to_full_batch_with_normalizer():
    g = torch.Generator().manual_seed(1)
    lp, old, adv = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.1 for _ in range(3))
    mask = (torch.rand(6, 5, generator=g) > 0.3).double()
    full, _ = L.policy_loss(lp, old, adv, mask, 0.2)
    n = float(mask.sum())
    parts = sum(L.policy_loss(lp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], 0.2, n)[0] for i in (0, 2, 4))
    assert float(parts) == pytest.approx(float(full), rel=1e-12)
    fv, _ = L.value_loss(lp, old, adv, mask, 0.2)
    pv = sum(L.value_loss(lp[i : i + 3], old[i : i + 3], adv[i : i + 3], mask[i : i + 3], 0.2, n)[0] for i in (0, 3))
    assert float(pv) == pytest.approx(float(fv), rel=1e-12)


# ------------------------------------------------------------ batching and log-probs


def test_prompt_indices_cover_each_epoch_once():
    from rlaif.train.ppo import prompt_indices

    n, size = 10, 4
    seen = [i for it in range(5) for i in prompt_indices(n, size, seed=3, iteration=it)]  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # reshuffled every epoch
    assert prompt_indices(n, size, 3, 2) == prompt_indices(n, size, 3, 2)


def _fake_samples(rng, vocab, n):
    out = []
    for _ in range(n):
        p = tuple(rng.randrange(4, vocab) for _ in range(rng.randint(2, 9)))
        r = tuple(rng.randrange(4, vocab) for _ in range(rng.randint(1, 7)))
        out.append(TokenSample(p, r, tuple(0.0 for _ in r), "", "stop" if rng.random() < 0.5 else "length"))
    return out


def test_batched_response_logps_and_values_match_one_at_a_time(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    critic = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32).eval()
    samples = _fake_samples(random.Random(0), len(tokenizer), 6)
    batch = rollout.collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        lp, ent = rollout.response_logps(model, batch, temperature=0.7, with_entropy=True)
        vals = rollout.response_values(critic, batch)
        for i, smp in enumerate(samples):
            ids = torch.tensor([list(smp.prompt_ids) + list(smp.response_ids)])
            logits = model(input_ids=ids).logits[0, len(smp.prompt_ids) - 1 : -1] / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(smp.response_ids)[:, None])[:, 0]
            n = len(smp.response_ids)
            torch.testing.assert_close(lp[i, :n], want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ent[i, :n], L.entropy_from_logits(logits[None])[0], rtol=1e-5, atol=1e-5)
            v = critic(input_ids=ids).logits[0, len(smp.prompt_ids) - 1 : -1, 0]
            torch.testing.assert_close(vals[i, :n], v, rtol=1e-5, atol=1e-5)
    assert batch["response_mask"].sum(-1).tolist() == [len(s.response_ids) for s in samples]
    assert batch["ended"].tolist() == [s.ended for s in samples]


def test_sequence_classifier_reward_batched_equals_single(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    scorer = rollout.SequenceClassifierReward(str(tmp_path / "rm"), batch_size=3)
    prompts = [[{"role": "user", "content": "w1 w2"}], [{"role": "user", "content": "w3"}]] * 2
    responses = ["w5 good", "w7 w8 w9 bad", "w1", "w2 w3"]
    batched = scorer(prompts, responses)
    single = torch.cat([scorer([p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert len(set(batched.tolist())) == 4


def test_config_validation(tmp_path):
    from rlaif.train.ppo import PPOConfig

    with pytest.raises(ValueError, match="multiple"):
        PPOConfig(data="x", rollout_batch_size=3, batch_size=2)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(data="x", kl_estimator="k9")
    with pytest.raises(ValueError, match="not both"):
        PPOConfig(data="x", reward_model="a", reward_fn="b:c")
    cfg = PPOConfig(data="x", rollout_batch_size=4, samples_per_prompt=2, batch_size=2, grad_accum=2)
    assert cfg.rollouts == 8


# ----------------------------------------------------------- real vLLM, tiny model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_chat_model(folder, seed=0):
    """A 2-layer Llama over a 131-word vocabulary; head_dim 64 (what vLLM's CPU attention takes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    words += [f"w{i}" for i in range(120)] + ["good", "bad", "be", "kind"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words come back space-separated
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, intermediate_size=256, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def good_share(prompts, responses):
    """Programmatic reward: the share of the words of a response that are 'good'."""
    out = []
    for r in responses:
        words = r.split()
        out.append(sum(w == "good" for w in words) / max(1, len(words)))
    return torch.tensor(out)


def _cfg(model, data, runs, name, *extra):
    from rlaif.train.config import load_config
    from rlaif.train.ppo import PPOConfig

    return load_config(PPOConfig, None, [
        f"model={model}", f"data={data}", f"runs_dir={runs}", f"name={name}", "tensorboard=false",
        "rollout_batch_size=8", "samples_per_prompt=2", "batch_size=8", "grad_accum=1", "max_new_tokens=12",
        "max_length=64", "max_prompt_length=32", "lr=3e-3", "lr_schedule=constant", "warmup_ratio=0", *extra,
    ])


@pytest.mark.vllm
def test_weight_sync_moves_engine_to_trainer_weights(engine, tiny_chat):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
    rollout.sync_weights(engine, model)  # earlier tests may have left other weights in the shared engine
    prompt = engine.encode_chat([{"role": "user", "content": "w1 w2 w3"}])
    seq = prompt + engine.tokenizer.encode("w4 good w5 w6 bad", add_special_tokens=False) + [engine.tokenizer.eos_token_id]
    before = engine_logps(engine, seq, len(prompt))
    torch.testing.assert_close(before, trainer_logps(model, seq, len(prompt)), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # every weight moves, the tied embedding / LM head included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seconds = rollout.sync_weights(engine, model)
    after = engine_logps(engine, seq, len(prompt))
    torch.testing.assert_close(after, trainer_logps(model, seq, len(prompt)), rtol=1e-4, atol=1e-4)
    assert float((after - before).abs().max()) > 0.05
    assert seconds < 30


@pytest.mark.vllm
def test_sampled_logprobs_match_trainer(engine, tiny_chat):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32).eval()
    rollout.sync_weights(engine, model)
    prompt = engine.encode_chat([{"role": "user", "content": "w9 w8"}])
    samples = engine.sample_tokens([prompt] * 24, list(range(24)), max_tokens=20, temperature=0.8)
    assert len({s.response_ids for s in samples}) > 1
    again = engine.sample_tokens([prompt], [5], max_tokens=20, temperature=0.8)
    assert again[0].response_ids == samples[5].response_ids  # seeded: independent of the batch
    ended = [s for s in samples if s.ended]
    assert all(s.response_ids[-1] == engine.tokenizer.eos_token_id for s in ended)
    assert all(len(s.response_ids) == 20 for s in samples if not s.ended)
    batch = rollout.collate(samples, 0)
    with torch.no_grad():
        lp, _ = rollout.response_logps(model, batch, temperature=0.8)
    gap = (lp - batch["engine_logp"]).abs() * batch["response_mask"]
    assert float(gap.max()) < 1e-4


@pytest.mark.vllm
def test_one_ppo_iteration_end_to_end(engine, tiny_chat, prompt_file, tmp_path):
    from safetensors.torch import load_file

    from rlaif.train import ppo

    cfg = _cfg(tiny_chat, prompt_file, tmp_path, "one", "max_steps=1", "ppo_epochs=2", "batch_size=4", "grad_accum=2",
               "missing_eos_penalty=0.5", "kl_estimator=k3", "adaptive_kl=true", "kl_target=0.5", "eval_fraction=0.1")
    s = ppo.setup(cfg, engine=engine, reward_fn=good_share)
    before = {k: v.clone() for k, v in s.policy.state_dict().items()}
    critic_before = s.critic.score.weight.clone()
    metrics = ppo.train(s)
    out = ppo.save(s)
    ppo.cleanup(s)
    for key in ("score", "kl", "kl_k1", "kl_k3", "entropy", "policy/clipfrac", "policy/approx_kl", "value/loss",
                "response_length", "truncated", "rollout/tokens_per_s", "rollout/logprob_gap_mean",
                "time/rollout_s", "time/score_s", "time/update_s", "time/sync_s"):
        assert math.isfinite(metrics[f"train/{key}"]), key
    assert 0.0 <= metrics["eval/score"] <= 1.0 and metrics["eval/response_length"] > 0  # 5 held-out prompts
    assert metrics["train/rollout/logprob_gap_max"] < 1e-3  # the engine sampled with the trainer's weights
    assert metrics["train/kl"] == pytest.approx(0.0, abs=1e-4)  # first rollout: policy == reference
    assert metrics["train/policy/approx_kl"] > 0  # two epochs: the second saw a moved policy
    assert s.position["kl_coef"] < 0.05  # KL 0 is under the target: the controller lowers beta
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], s.policy.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(critic_before, s.critic.score.weight)
    assert (out / "model.safetensors").exists() and (tmp_path / "one" / "checkpoints" / "step-000001").is_dir()
    assert load_file(str(out / "model.safetensors"))
    # after the sync the engine serves the updated policy
    prompt = engine.encode_chat([{"role": "user", "content": "w1"}])
    seq = prompt + engine.tokenizer.encode("w2 good", add_special_tokens=False)
    torch.testing.assert_close(engine_logps(engine, seq, len(prompt)),
                               trainer_logps(s.policy.float(), seq, len(prompt)), rtol=1e-4, atol=1e-4)


@pytest.mark.vllm
@pytest.mark.parametrize("lora", [False, True])
def test_resume_repeats_the_uninterrupted_run(engine, tiny_chat, prompt_file, tmp_path, lora):
    from rlaif.train import ppo

    def run(name):
        cfg = _cfg(tiny_chat, prompt_file, tmp_path, name, "max_steps=2", "save_every=1", "keep_checkpoints=3",
                   "adaptive_kl=true", "batch_size=4", "grad_accum=2", f"lora.enabled={str(lora).lower()}")
        s = ppo.setup(cfg, engine=engine, reward_fn=good_share)
        ppo.train(s)
        ppo.cleanup(s)
        return [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    a = run("a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000002")
    b = run("b")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2]
    for k in ("train/score", "train/kl", "train/policy/loss", "train/value/loss", "train/kl_coef", "train/entropy"):
        assert b[1][k] == pytest.approx(a[1][k], rel=1e-5, abs=1e-7), k


@pytest.mark.vllm
def test_reward_rises_while_kl_stays_bounded(engine, tiny_chat, prompt_file, tmp_path):
    from rlaif.train import ppo

    cfg = _cfg(tiny_chat, prompt_file, tmp_path, "learn", "max_steps=8", "rollout_batch_size=16", "kl_coef=0.02",
               "ppo_epochs=2", "batch_size=8", "grad_accum=2")
    s = ppo.setup(cfg, engine=engine, reward_fn=good_share)
    ppo.train(s)
    ppo.cleanup(s)
    log = [json.loads(l) for l in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    scores = [m["train/score"] for m in log]
    kls = [m["train/kl"] for m in log]
    print("reward curve:", [round(x, 4) for x in scores], "kl:", [round(x, 3) for x in kls])
    # the untrained model says 'good' about 1 word in 131
    assert sum(scores[:2]) / 2 < 0.05
    assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.05
    assert max(kls) < 20.0
    assert max(m["train/rollout/logprob_gap_max"] for m in log) < 1e-3


@pytest.mark.vllm
def test_target_kl_stops_the_epochs_early(engine, tiny_chat, prompt_file, tmp_path):
    from rlaif.train import ppo

    def run(name, *extra):
        cfg = _cfg(tiny_chat, prompt_file, tmp_path, name, "max_steps=1", "ppo_epochs=3", "batch_size=4",
                   "grad_accum=2", "lr=1e-3", *extra)
        s = ppo.setup(cfg, engine=engine, reward_fn=good_share)
        m = ppo.train(s)
        lr_after = s.scheduler.last_epoch
        ppo.cleanup(s)
        return m, lr_after

    full, steps_full = run("full")
    early, steps_early = run("early", "target_kl=1e-9")
    planned = 3 * (16 // 8)
    assert full["train/policy/update_steps"] == planned and full["train/policy/early_stop"] == 0
    # the first mini-batch is scored by the rollout policy itself (KL 0) and applied; the next one has moved
    assert early["train/policy/update_steps"] == 1 and early["train/policy/early_stop"] == 1
    assert steps_full == steps_early == planned  # the schedule advances as if every epoch ran


@pytest.mark.vllm
def test_lora_ppo_syncs_merged_weights_and_keeps_the_base(engine, tiny_chat, prompt_file, tmp_path):
    from rlaif.train import ppo, rollout

    cfg = _cfg(tiny_chat, prompt_file, tmp_path, "lora", "max_steps=1", "ppo_epochs=2", "batch_size=4", "grad_accum=2",
               "lora.enabled=true", "lora.r=4", "lora.dropout=0.1", "lr=1e-2")
    s = ppo.setup(cfg, engine=engine, reward_fn=good_share)
    assert s.ref is None  # the reference is the policy with its adapters off: no second copy
    base = s.policy.get_base_model()
    frozen = base.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    metrics = ppo.train(s)
    assert metrics["train/kl"] == pytest.approx(0.0, abs=1e-4)  # fresh adapters (B = 0): policy == base
    assert metrics["train/rollout/logprob_gap_max"] < 1e-3
    # adapters moved, the base weights did not
    assert torch.equal(frozen, base.model.layers[0].self_attn.q_proj.base_layer.weight)
    lora_b = base.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert float(lora_b.abs().sum()) > 0
    # the engine serves the merged policy: its log-probs equal the adapted trainer's
    names = dict(rollout.engine_weights(s.policy))
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("lora_" in n for n in names)
    assert not torch.equal(names["model.layers.0.self_attn.q_proj.weight"], frozen)
    prompt = engine.encode_chat([{"role": "user", "content": "w1"}])
    seq = prompt + engine.tokenizer.encode("w2 good", add_special_tokens=False)
    s.policy.eval()
    trainer = trainer_logps(s.policy, seq, len(prompt))
    torch.testing.assert_close(engine_logps(engine, seq, len(prompt)), trainer, rtol=1e-4, atol=1e-4)
    out_dir = ppo.save(s)
    ppo.cleanup(s)
    assert (out_dir / "model.safetensors").exists()
    assert not list(out_dir.glob("adapter_*"))  # merged on save: loads in transformers and vLLM as is
