"""Loss values pinned by hand, limits, and oracles. rtol <= 1e-5 throughout.

Notation: softplus(x) = log(1 + e^x), so -log sigma(x) = softplus(-x) and
softplus(x) - softplus(-x) = x.
"""
import math

import pytest
import torch

from rlaif.train import losses as L

RTOL = 1e-6


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def close(a, b, rtol=RTOL):
    assert float(a) == pytest.approx(float(b), rel=rtol, abs=1e-12), (float(a), float(b))


# ------------------------------------------------------------------ log-probs
def test_token_logps_matches_log_softmax_oracle():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    got = L.token_logps(logits, labels)
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_token_logps_matches_trl_selective_log_softmax():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 7, 13, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 13, (2, 7), generator=g)
    torch.testing.assert_close(L.token_logps(logits, labels), trl_utils.selective_log_softmax(logits, labels),
                               rtol=1e-12, atol=1e-12)


def test_token_logps_uniform_is_minus_log_v():
    # Equal logits over V = 4 tokens: every token has probability 1/4.
    got = L.token_logps(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))
    torch.testing.assert_close(got, torch.full((1, 2), -math.log(4.0)))


def test_sequence_logps_sum_and_mean_against_loop():
    lp = t(-1.0, -2.0, -3.0, -4.0).view(1, 4).repeat(2, 1)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    s = L.sequence_logps(lp, mask)
    m = L.sequence_logps(lp, mask, average=True)
    # row 0: -2 - 3 = -5 over 2 tokens; row 1: -10 over 4 tokens.
    torch.testing.assert_close(s, t(-5.0, -10.0))
    torch.testing.assert_close(m, t(-2.5, -2.5))


# ------------------------------------------------------------------------ SFT
def test_sft_loss_masks_prompt_and_padding():
    # token log-probs: prompt tokens are very unlikely, trained tokens -0.5 and -1.5.
    lp = t(-50.0, -0.5, -1.5, -99.0).view(1, 4)
    mask = torch.tensor([[0, 1, 1, 0]])
    loss, m = L.sft_loss(lp, mask)
    close(loss, 1.0)  # (0.5 + 1.5) / 2
    close(m["tokens"], 2)


def test_sft_loss_uniform_logits_is_log_v():
    logits = torch.zeros(2, 3, 7)
    labels = torch.tensor([[1, 2, 3], [4, 5, 6]])
    loss, _ = L.sft_loss(L.token_logps(logits, labels), torch.ones(2, 3))
    close(loss, math.log(7.0))


def test_sft_loss_matches_torch_cross_entropy_with_ignored_labels():
    """The masked mean NLL is what torch's cross_entropy computes with the masked labels set to -100
    (the Hugging Face convention for prompt and padding tokens)."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 6, 17, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 17, (3, 6), generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.4
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 17), labels.masked_fill(~mask, -100).reshape(-1),
                                             ignore_index=-100)
    close(L.sft_loss(L.token_logps(logits, labels), mask)[0], want, 1e-12)


def test_sft_loss_accumulated_equals_full_batch():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.4).long()
    full, _ = L.sft_loss(lp, mask)
    n = int(mask.sum())
    parts = sum(L.sft_loss(lp[i : i + 1], mask[i : i + 1], normalizer=n)[0] for i in range(4))
    close(parts, full, 1e-12)


# ---------------------------------------------------------------- Bradley-Terry
def test_bt_hard_label():
    loss, m = L.bradley_terry_loss(t(1.0), t(0.0))
    close(loss, math.log1p(math.exp(-1.0)))  # -log sigma(1) = 0.3132616875...
    close(loss, 0.31326168751822286)
    close(m["accuracy"], 1.0)
    close(m["margin"], 1.0)


def test_bt_zero_difference_is_log2_and_margin_shifts():
    close(L.bradley_terry_loss(t(0.3), t(0.3))[0], math.log(2))
    # margin 1 on a reward gap of 1 leaves z = 0.
    close(L.bradley_terry_loss(t(1.0), t(0.0), margin=t(1.0))[0], math.log(2))


def test_bt_soft_label_minimum_is_entropy():
    # p = 0.8 at z = logit(0.8) = log 4: loss = H(0.8) = -(0.8 ln 0.8 + 0.2 ln 0.2).
    z = math.log(4.0)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    close(L.bradley_terry_loss(t(z), t(0.0), chosen_prob=t(0.8))[0], h)
    close(h, 0.5004024235381879)
    # and this is the minimum: the gradient in z vanishes there.
    rc = t(z).requires_grad_()
    L.bradley_terry_loss(rc, t(0.0), chosen_prob=0.8)[0].backward()
    assert abs(float(rc.grad)) < 1e-12


def _argmin_convex(f, lo=-40.0, hi=40.0, iters=200):
    """Minimiser of a convex function of one variable by ternary search (no closed form used)."""
    for _ in range(iters):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi)


def _bt_optimum_by_hand(p, m):
    """Solve p sigma(m - d) = (1 - p) sigma(d + m) for d (see the derivation in bradley_terry_loss):
    with x = e^d, k = e^-m: (1 - p) k x^2 + (1 - 2p) x - p k = 0, the positive root."""
    k = math.exp(-m)
    x = ((2 * p - 1) + math.sqrt((1 - 2 * p) ** 2 + 4 * p * (1 - p) * k * k)) / (2 * (1 - p) * k)
    return math.log(x)


@pytest.mark.parametrize("p,m", [(0.5, 0.0), (0.5, 1.0), (0.5, 3.0), (0.8, 0.0), (0.8, 1.0), (0.3, 2.0),
                                 (0.95, 3.0), (0.1, 0.5)])
def test_bt_soft_label_and_margin_optimum(p, m):
    """The expected loss's minimum over d = r_c - r_r, found numerically, sits where the
    algebra puts it: 0 for a coin flip whatever the margin, logit(p) without a margin,
    and further out in the credited direction with one."""
    def loss(d):
        return float(L.bradley_terry_loss(t(d), t(0.0), chosen_prob=t(p), margin=t(m))[0])

    d_num = _argmin_convex(loss)
    d_hand = _bt_optimum_by_hand(p, m)
    assert d_num == pytest.approx(d_hand, abs=1e-6)
    if p == 0.5:
        assert d_num == pytest.approx(0.0, abs=1e-6)
    if m == 0.0:
        assert d_num == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    else:  # the margin widens the gap beyond the label's log-odds, on the label's side
        assert abs(d_num) >= abs(math.log(p / (1 - p))) - 1e-9
        assert math.copysign(1, d_num) == math.copysign(1, p - 0.5) or p == 0.5


def test_bt_swapping_chosen_and_rejected_changes_nothing():
    """(chosen, rejected, p) and (rejected, chosen, 1 - p) describe the same judgement."""
    rc, rr = t(0.7, -0.2, 1.5), t(0.1, 0.4, -0.5)
    p, m = t(0.8, 0.35, 0.5), t(1.0, 2.0, 0.5)
    close(L.bradley_terry_loss(rc, rr, p, m)[0], L.bradley_terry_loss(rr, rc, 1 - p, m)[0], 1e-12)


def test_soft_labels_are_binary_cross_entropy_against_the_label():
    """Without a margin, the Bradley-Terry loss with soft label p, and DPO with eps = 1 - p (cDPO), are
    torch's binary cross-entropy of the logit (d, or beta h) against p."""
    g = torch.Generator().manual_seed(12)
    d, p = torch.randn(8, generator=g, dtype=torch.float64) * 3, torch.rand(8, generator=g, dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    close(L.bradley_terry_loss(d, torch.zeros(8, dtype=torch.float64), chosen_prob=p)[0], bce(d, p), 1e-12)
    pc, pr, rc, rr = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(4))
    h = (pc - rc) - (pr - rr)
    close(L.dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=1 - p)[0], bce(0.3 * h, p), 1e-12)


def test_bt_soft_label_one_equals_hard():
    rc, rr = t(0.7, -0.2), t(0.1, 0.4)
    close(L.bradley_terry_loss(rc, rr, chosen_prob=t(1.0, 1.0))[0], L.bradley_terry_loss(rc, rr)[0])


def test_bt_centring_term():
    # (1 + 0)^2 * 0.01 added to softplus(-1).
    close(L.bradley_terry_loss(t(1.0), t(0.0), center_coef=0.01)[0], 0.31326168751822286 + 0.01)


# ----------------------------------------------------------------------- DPO
def test_dpo_zero_margin_is_log2_for_any_smoothing():
    z = t(-3.0, -7.0)
    for eps in (0.0, 0.1, 0.5):
        loss, m = L.dpo_sigmoid_loss(z, z, z, z, beta=0.1, label_smoothing=eps)
        close(loss, math.log(2))
    close(m["margin"], 0.0)


def test_dpo_hand_value():
    # h = (-1 - -1.5) - (-2 - -1.5) = 1; beta h = 0.1 -> softplus(-0.1) = 0.6443966600...
    args = (t(-1.0), t(-2.0), t(-1.5), t(-1.5))
    loss, m = L.dpo_sigmoid_loss(*args, beta=0.1)
    close(loss, 0.6443966600735709)
    close(m["reward_chosen"], 0.05)
    close(m["reward_rejected"], -0.05)
    close(m["accuracy"], 1.0)
    # cDPO: 0.75 softplus(-0.1) + 0.25 softplus(0.1) = softplus(-0.1) + 0.25 * 0.1
    close(L.dpo_sigmoid_loss(*args, beta=0.1, label_smoothing=0.25)[0], 0.6443966600735709 + 0.025)


def test_dpo_gradient_at_zero_and_limits():
    # dl/dh at h = 0 is beta (eps - 1/2).
    for eps in (0.0, 0.2):
        pc = t(0.0).requires_grad_()
        L.dpo_sigmoid_loss(pc, t(0.0), t(0.0), t(0.0), beta=0.5, label_smoothing=eps)[0].backward()
        close(pc.grad, 0.5 * (eps - 0.5))
    # h -> +inf: loss -> 0; h -> -inf: loss ~ -beta h.
    assert float(L.dpo_sigmoid_loss(t(200.0), t(0.0), t(0.0), t(0.0), beta=1.0)[0]) < 1e-80
    close(L.dpo_sigmoid_loss(t(-200.0), t(0.0), t(0.0), t(0.0), beta=1.0)[0], 200.0)


def test_dpo_soft_labels_per_pair():
    # eps per pair = 1 - chosen_prob; pair 2 has p = 1/2 so its loss is log 2 for any h.
    h = t(1.0, 3.0)
    loss, _ = L.dpo_sigmoid_loss(h, t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0, label_smoothing=t(0.0, 0.5))
    want = (math.log1p(math.exp(-1.0)) + 0.5 * (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(3.0)))) / 2
    close(loss, want)


def test_ipo_hand_values_and_minimum():
    args = (t(1.0), t(0.0), t(0.0), t(0.0))  # h = 1
    close(L.ipo_loss(*args, beta=0.25)[0], 1.0)  # (1 - 2)^2
    close(L.ipo_loss(*args, beta=0.25, label_smoothing=0.25)[0], 3.0)  # 0.75 * 1 + 0.25 * 9
    # minimum at h = (1 - 2 eps) / (2 beta) = 0.5 * 2 = 1 for eps = 0.25, beta = 0.25
    pc = t(1.0).requires_grad_()
    L.ipo_loss(pc, t(0.0), t(0.0), t(0.0), beta=0.25, label_smoothing=0.25)[0].backward()
    close(pc.grad, 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.5])
def test_ipo_label_noise_optimum_is_the_population_target(eps):
    """Azar et al. 2023: the IPO population objective with preference probability p is minimised at
    h* = (p - 1/2) / tau. With p = 1 - eps (tau = beta), the minimiser of the expected loss, found by
    ternary search on the loss itself, must sit there."""
    beta = 0.25

    def loss(h):
        return float(L.ipo_loss(t(h), t(0.0), t(0.0), t(0.0), beta=beta, label_smoothing=eps)[0])

    assert _argmin_convex(loss) == pytest.approx(((1 - eps) - 0.5) / beta, abs=1e-6)


def test_hinge_hand_values():
    args = (t(1.0), t(0.0), t(0.0), t(0.0))  # h = 1
    close(L.hinge_loss(*args, beta=0.5)[0], 0.5)
    close(L.hinge_loss(*args, beta=0.5, label_smoothing=0.25)[0], 0.75)  # .75*.5 + .25*1.5
    close(L.hinge_loss(*args, beta=2.0)[0], 0.0)


def test_simpo_hand_value():
    # z = 2 * (-0.5 - -1.0) - 0.5 = 0.5; softplus(-0.5) = 0.4740769841801067
    loss, m = L.simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5)
    close(loss, 0.4740769841801067)
    close(m["margin"], 1.0)
    # gamma = beta * delta makes z = 0
    close(L.simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=1.0)[0], math.log(2))


def test_rdpo_hand_value():
    """The worked example of rdpo_loss's docstring, with Park et al. 2024's sign: the length term
    alpha (|y_w| - |y_l|) is *added* to beta h (r = beta log(pi / ref) + alpha |y| at the optimum of
    E[r - alpha |y|] - beta KL). beta h = 0.1 * (2 - (-1)) = 0.3; alpha dlen = 0.05 * (20 - 10) = 0.5;
    z = 0.8 and loss = log(1 + e^-0.8) = 0.3711006659477777 (a hand value, not the code's formula)."""
    args = (t(-10.0), t(-9.0), t(-12.0), t(-8.0), t(20.0), t(10.0))
    loss, m = L.rdpo_loss(*args, beta=0.1, alpha=0.05)
    close(loss, 0.3711006659477777)
    close(m["length_penalty"], 0.5)
    close(m["margin"], 0.3)  # the implicit reward gap, without the length term
    # label noise 0.25: softplus(-0.8) + 0.25 * 0.8, since softplus(x) - softplus(-x) = x
    close(L.rdpo_loss(*args, beta=0.1, alpha=0.05, label_smoothing=0.25)[0], 0.5711006659477777)
    # without the length term it is DPO: log(1 + e^-0.3)
    close(L.rdpo_loss(*args, beta=0.1, alpha=0.0)[0], 0.5543552444685271)
    close(L.dpo_sigmoid_loss(*args[:4], beta=0.1)[0], 0.5543552444685271)
    # a longer chosen answer needs less margin (cheaper than DPO); a shorter one needs more:
    # lengths swapped, z = 0.3 - 0.5 = -0.2 and loss = log(1 + e^0.2)
    close(L.rdpo_loss(*args[:4], t(10.0), t(20.0), beta=0.1, alpha=0.05)[0], 0.7981388693815918)


@pytest.mark.parametrize("p", [0.5, 0.7, 0.95, 0.2])
@pytest.mark.parametrize("dlen", [10.0, -6.0, 0.0])
def test_rdpo_optimum_is_the_label_log_odds_minus_the_length_term(p, dlen):
    """Park et al. 2024: r = beta log(pi / ref) + alpha |y| + const, and a Bradley-Terry preference
    p = sigma(r_w - r_l) then puts the optimum of the expected loss at beta h* = logit(p) - alpha dlen.
    The minimiser is found numerically from the loss itself (ternary search over h) and compared
    with that closed form; the label enters as a soft label smoothed by eps, as the DPO recipe does:
    p_eff = (1 - eps) p + eps (1 - p)."""
    beta, alpha, smooth = 0.1, 0.05, 0.1
    eps = L.soft_label_noise(t(p), smooth)  # 1 - p_eff

    def loss(h):
        return float(L.rdpo_loss(t(h), t(0.0), t(0.0), t(0.0), t(20.0 + dlen), t(20.0), beta=beta, alpha=alpha,
                                 label_smoothing=eps)[0])

    p_eff = (1 - smooth) * p + smooth * (1 - p)
    h_star = _argmin_convex(loss, lo=-400.0, hi=400.0)
    assert beta * h_star == pytest.approx(math.log(p_eff / (1 - p_eff)) - alpha * dlen, abs=1e-6)


def test_rdpo_is_dpo_at_alpha_zero_and_swap_symmetric():
    g = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = (-5 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    lc, lr = torch.randint(1, 50, (6,), generator=g), torch.randint(1, 50, (6,), generator=g)
    eps = torch.rand(6, generator=g, dtype=torch.float64) * 0.5
    close(L.rdpo_loss(pc, pr, rc, rr, lc, lr, beta=0.3, alpha=0.0, label_smoothing=eps)[0],
          L.dpo_sigmoid_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)[0], 1e-12)
    # the pair read the other way round with the complementary label is the same judgement
    close(L.rdpo_loss(pc, pr, rc, rr, lc, lr, beta=0.3, alpha=0.02, label_smoothing=eps)[0],
          L.rdpo_loss(pr, pc, rr, rc, lr, lc, beta=0.3, alpha=0.02, label_smoothing=1 - eps)[0], 1e-12)
    full = L.rdpo_loss(pc, pr, rc, rr, lc, lr, beta=0.3, alpha=0.02)[0]
    parts = sum(L.rdpo_loss(pc[i:i + 3], pr[i:i + 3], rc[i:i + 3], rr[i:i + 3], lc[i:i + 3], lr[i:i + 3],
                            beta=0.3, alpha=0.02, normalizer=6)[0] for i in (0, 3))
    close(parts, full, 1e-12)


def test_pair_loss_accumulation_matches_full_batch():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(4)]
    for fn in L.PAIR_LOSSES.values():
        full = fn(*xs, beta=0.3)[0]
        parts = sum(fn(*(x[i : i + 2] for x in xs), beta=0.3, normalizer=6)[0] for i in (0, 2, 4))
        close(parts, full, 1e-12)


def test_label_smoothing_out_of_range_rejected():
    with pytest.raises(ValueError):
        L.dpo_sigmoid_loss(t(0.0), t(0.0), t(0.0), t(0.0), label_smoothing=1.5)


# ------------------------------------------------------- cross-check with TRL
def _rand_logps(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [-5 * torch.rand(n, generator=g, dtype=torch.float32) for _ in range(4)]


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)])
def test_matches_trl_cpo_loss_on_log_ratios(loss_type, eps):
    """TRL's CPO loss is DPO's with the reference removed, so feeding it the log-ratios
    ``pi - ref`` must give our reference-based losses."""
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    from types import SimpleNamespace

    pc, pr, rc, rr = _rand_logps(8, 3)
    fake = SimpleNamespace(
        alpha=0.0, beta=0.2, loss_type=loss_type, label_smoothing=eps, simpo_gamma=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    trl_losses = cpo.CPOTrainer.cpo_loss(fake, pc - rc, pr - rr)[0]
    ours = L.PAIR_LOSSES[loss_type](pc, pr, rc, rr, beta=0.2, label_smoothing=eps)[0]
    close(ours, trl_losses.mean(), 1e-5)


def test_matches_trl_simpo():
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    from types import SimpleNamespace

    pc, pr, _, _ = _rand_logps(8, 4)
    fake = SimpleNamespace(
        alpha=0.0, beta=2.0, loss_type="simpo", label_smoothing=0.1, simpo_gamma=0.5,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    trl_losses = cpo.CPOTrainer.cpo_loss(fake, pc, pr)[0]
    close(L.simpo_loss(pc, pr, beta=2.0, gamma=0.5, label_smoothing=0.1)[0], trl_losses.mean(), 1e-5)


def _fake_trl_self(**kw):
    from collections import defaultdict
    from types import SimpleNamespace

    ident = lambda x: x  # noqa: E731
    base = dict(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=ident, gather_for_metrics=ident),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_matches_trl_dpo_trainer_compute_loss(loss_type):
    """Drive TRL's DPOTrainer._compute_loss with a fake model whose per-token
    log-probs we choose, and precomputed reference log-probs."""
    dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(5)
    B, T = 3, 6
    mask = torch.zeros(2 * B, T, dtype=torch.long)
    lengths = [2, 3, 4, 1, 4, 2]
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    tok = -torch.rand(2 * B, T - 1, generator=g) * mask[:, 1:]
    ref = -5 * torch.rand(2 * B, generator=g)

    def model(**kw):
        z = torch.zeros_like(tok)
        return SimpleNamespace(log_probs=tok, entropy=z, mean_logits=z, is_top1=z.bool())

    fake = _fake_trl_self(
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=0.3, label_smoothing=0.0, use_weighting=False,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
        "completion_mask": mask, "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:],
    }
    trl_loss = dpo.DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False)

    seq = L.sequence_logps(tok, mask[:, 1:], average=False)
    pol_c, pol_r = seq[:B], seq[B:]
    ref_c, ref_r = ref[:B], ref[B:]
    if loss_type == "ipo":  # TRL averages the log-ratios over completion tokens
        n = mask[:, 1:].sum(-1).float()
        pol_c, pol_r, ref_c, ref_r = pol_c / n[:B], pol_r / n[B:], ref_c / n[:B], ref_r / n[B:]
    ours, m = L.PAIR_LOSSES[loss_type](pol_c, pol_r, ref_c, ref_r, beta=0.3)
    close(ours, trl_loss, 1e-5)
    if loss_type != "ipo":  # TRL's reward metrics use the summed log-probs; IPO's loss the averaged ones
        for key, trl_key in (("reward_chosen", "rewards/chosen"), ("reward_rejected", "rewards/rejected"),
                             ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")):
            close(m[key], fake._metrics["train"][trl_key][-1], 1e-5)


@pytest.mark.parametrize("use_margin,center", [(False, None), (True, 0.01)])
def test_matches_trl_reward_trainer_compute_loss(use_margin, center):
    rt = pytest.importorskip("trl.trainer.reward_trainer")
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(6)
    rewards = torch.randn(8, 1, generator=g)
    margin = torch.rand(4, generator=g)
    fake = _fake_trl_self(args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3)}
    if use_margin:
        inputs["margin"] = margin
    trl_loss = rt.RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=rewards), inputs)
    ours = L.bradley_terry_loss(
        rewards[:4, 0], rewards[4:, 0], margin=margin if use_margin else 0.0, center_coef=center or 0.0
    )[0]
    close(ours, trl_loss, 1e-5)


def test_soft_label_noise():
    # p = 0.9, eps = 0.1: q = 0.9 * 0.9 + 0.1 * 0.1 = 0.82, so 1 - q = 0.18
    torch.testing.assert_close(L.soft_label_noise(t(0.9, 1.0, 0.5), 0.1), t(0.18, 0.1, 0.5))
    torch.testing.assert_close(L.soft_label_noise(t(0.7), 0.0), t(0.3))


def test_docs_name_an_independent_check_for_every_loss():
    """docs/training.md's "How each loss is checked" lists every public function of losses.py and
    rl_losses.py, and every test it names exists in tests/train/."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## How each loss is checked", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    public = set()
    for mod in ("losses", "rl_losses"):
        tree = ast.parse((root / "rlaif" / "train" / f"{mod}.py").read_text(encoding="utf-8"))
        public |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    assert public - documented == set(), "functions with no row"
    tests = {n.name for f in (root / "tests" / "train").glob("test_*.py")
             for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))) if isinstance(n, ast.FunctionDef)}
    named = {m.rstrip("*").rstrip("_") for row in rows for m in re.findall(r"`(test_[\w*]+)", row.split("|")[4])}
    missing = {n for n in named if n not in tests and not any(t.startswith(n) for t in tests)}
    assert named and missing == set(), f"tests named in the docs that do not exist: {sorted(missing)}"
