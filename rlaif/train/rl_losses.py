"""PPO pieces: one pure function per equation. Imports only torch.

Conventions
-----------
* Tensors are laid out per response token: ``(B, T)`` with ``B`` responses and ``T``
  the longest response; ``mask`` is 1 on response tokens (a prefix of each row: a
  response is left-aligned and right-padded) and 0 on padding. Position ``t`` holds the
  ``t``-th response token ``a_t``, the log-probability ``log pi(a_t | s_t)`` and the value
  ``V(s_t)`` of the state just before ``a_t`` was sampled.
* Losses return ``(loss, metrics)`` like :mod:`rlaif.train.losses`: ``loss`` is the sum
  over unmasked tokens divided by ``normalizer`` (the token count of the whole
  optimiser step, so that micro-batches accumulate to the full-batch loss; defaults to
  this batch's token count). ``metrics`` are detached means over this batch's tokens.
"""
from __future__ import annotations

import torch

Metrics = dict[str, torch.Tensor]

#: KL estimators :func:`kl_estimate` knows.
KL_ESTIMATORS = ("k1", "k2", "k3")


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# -------------------------------------------------------------------- masked stats
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over unmasked elements (0 when nothing is unmasked). ``x``, ``mask``: ``(B, T)``."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over unmasked elements; ``unbiased`` divides by ``n - 1`` (Bessel)."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1.0)
    ss = (((x - mean) ** 2) * m).sum()
    return ss / (n - 1).clamp(min=1.0) if unbiased else ss / n.clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over unmasked elements; masked elements become 0.

    ``shift_mean=False`` only rescales and adds the mean back (as reward whitening does in
    Ziegler et al. 2019's code and TRL), so the reward keeps its sign on average.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


# ---------------------------------------------------------------------- KL to ref
def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || ref)`` from tokens sampled from ``pi``.

    With ``log r = log ref(a_t) - log pi(a_t)`` (Schulman 2020, "Approximating KL
    divergence"):

    * ``k1 = -log r``: unbiased, can be negative; its sum over a response is the
      per-sequence KL penalty of Ziegler et al. 2019 (eq. 2) and Stiennon et al. 2020;
    * ``k2 = (log r)^2 / 2``: biased, low variance, always >= 0;
    * ``k3 = (r - 1) - log r``: unbiased and always >= 0.

    Args:
        logp, ref_logp: ``(B, T)`` log-probabilities of the sampled tokens under the
            policy and the reference.
    Returns:
        ``(B, T)``.
    """
    log_r = _up(ref_logp) - _up(logp)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Next KL coefficient of the adaptive controller (Ziegler et al. 2019, sec. 2.2).

    ``e = clip(KL / KL_target - 1, -0.2, 0.2)`` and ``beta <- beta (1 + e n / horizon)``
    where ``n`` is the number of episodes since the last update (``K_beta = n / horizon``
    in the paper's notation): beta grows while the measured KL is above the target and
    shrinks below it, by at most 20% of ``n / horizon`` per update.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


# ----------------------------------------------------------------------- rewards
def length_limit_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that has no end token.

    A response cut by the token limit was never finished, and a reward model may still
    like its first half; the penalty (TRL's ``missing_eos_penalty``) makes stopping pay.

    Args:
        scores: ``(B,)`` sequence scores.
        ended: ``(B,)`` bool, true when the response ends with an end token.
    """
    return _up(scores) - penalty * (~ended.bool()).to(_up(scores).dtype)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``r_t = -beta kl_t`` plus the sequence score on the last token.

    ``R(x, y) = r(x, y) - beta log(pi(y|x) / ref(y|x))`` (Ziegler et al. 2019, eq. 2;
    Ouyang et al. 2022, eq. 2), with the log-ratio spread over the tokens that make it
    up: ``r_t = -beta kl_t + [t = last] score``. Masked positions get 0.

    Args:
        scores: ``(B,)``; kl: ``(B, T)`` from :func:`kl_estimate`; mask: ``(B, T)``.
    Returns:
        ``(B, T)``.
    """
    m = mask.to(_up(kl).dtype)
    rewards = -kl_coef * _up(kl) * m
    last = (m.sum(-1).long() - 1).clamp(min=0)  # index of each row's last response token
    has_tokens = (m.sum(-1) > 0).to(rewards.dtype)
    return rewards.scatter_add(1, last[:, None], (_up(scores).to(rewards.dtype) * has_tokens)[:, None])


# -------------------------------------------------------------------------- GAE
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = sum_l (gamma lam)^l delta_{t+l}``,
    computed backwards as ``A_t = delta_t + gamma lam A_{t+1}``. The episode ends with the
    response: the value after the last token is 0, and nothing flows back from padding.
    The returns (value targets) are ``A_t + V(s_t)``; with ``lam = 1`` they are the
    discounted reward-to-go.

    Args:
        rewards, values, mask: ``(B, T)``.
    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 at masked positions.
    """
    m = mask.to(_up(values).dtype)
    r, v = _up(rewards) * m, _up(values) * m
    T = r.shape[1]
    adv = torch.zeros_like(v)
    next_adv = torch.zeros_like(v[:, 0])
    next_value = torch.zeros_like(v[:, 0])
    for t in reversed(range(T)):
        # delta_t = r_t + gamma * V(s_{t+1}) - V(s_t); V(s_{t+1}) is 0 past the last token
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value = v[:, t]
    return adv, (adv + v) * m


# ----------------------------------------------------------------------- losses
def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normalizer: float | int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ``rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)`` and
    ``l_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))``: once ``rho`` has moved
    past ``1 + eps`` (for ``A > 0``) or below ``1 - eps`` (for ``A < 0``) the token's
    gradient is 0.

    Args:
        logp: ``(B, T)`` under the current policy (with gradient).
        old_logp: ``(B, T)`` under the policy that sampled the tokens.
        advantages: ``(B, T)``.
        mask: ``(B, T)``.
    Returns:
        ``(loss, metrics)``: ``clipfrac`` (share of tokens whose clipped term is the
        larger one), ``approx_kl`` (k3 estimate of ``KL(pi_old || pi)``) and ``ratio``.
    """
    log_ratio = _up(logp) - _up(old_logp)
    ratio = torch.exp(log_ratio)
    adv = _up(advantages)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    m = mask.to(per_token.dtype)
    n = m.sum().clamp(min=1.0) if normalizer is None else normalizer
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(per_token.dtype), m),
            # The tokens were sampled from pi_old, so KL(pi_old || pi) is estimated by k3
            # (Schulman 2020) with r = pi / pi_old, the ratio of the *other* distribution to the
            # sampling one: (r - 1) - log r, and log r = log_ratio. (r = pi_old / pi would
            # estimate sum pi_old^2 / pi - 1 - KL, which is not a KL.)
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio": masked_mean(ratio, m),
        }
    return (per_token * m).sum() / n, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normalizer: float | int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss of PPO's reference code (OpenAI baselines ``ppo2``; Ziegler et al. 2019).

    ``V_clip = V_old + clip(V - V_old, -eps, eps)`` and
    ``l_t = 1/2 max((V - R)^2, (V_clip - R)^2)``: the value function cannot gain by moving
    more than ``eps`` from the values seen at rollout time.

    Args:
        values: ``(B, T)`` current predictions (with gradient).
        old_values: ``(B, T)`` predictions at rollout time.
        returns: ``(B, T)`` targets from :func:`gae`.
        mask: ``(B, T)``.
    Returns:
        ``(loss, metrics)``: ``clipfrac`` (share of tokens where the clipped error is the
        larger one) and ``mse`` (unclipped squared error).
    """
    v, v_old, ret = _up(values), _up(old_values), _up(returns)
    v_clip = v_old + torch.clamp(v - v_old, -clip_eps, clip_eps)
    err, err_clip = (v - ret) ** 2, (v_clip - ret) ** 2
    per_token = 0.5 * torch.maximum(err, err_clip)
    m = mask.to(per_token.dtype)
    n = m.sum().clamp(min=1.0) if normalizer is None else normalizer
    with torch.no_grad():
        metrics = {"clipfrac": masked_mean((err_clip > err).to(per_token.dtype), m), "mse": masked_mean(err, m)}
    return (per_token * m).sum() / n, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` of each position's distribution.

    Args:
        logits: ``(B, T, V)``.
    Returns:
        ``(B, T)`` in nats, float32 for half-precision logits.
    """
    z = _up(logits)
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


# ------------------------------------------------------------------------ groups
#: Baselines :func:`group_advantages` knows.
GROUP_BASELINES = ("mean", "rloo")


def group_advantages(rewards: torch.Tensor, baseline: str = "mean", scale: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Advantages of ``G`` responses to the same prompt from their rewards alone (no critic).

    * ``mean`` (GRPO, Shao et al. 2024 sec. 4.1.2): ``A_i = r_i - mean(r)``;
    * ``rloo`` (leave-one-out, Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j
      = G / (G - 1) (r_i - mean(r))``, an unbiased baseline since it never uses ``r_i``.

    With ``scale`` the advantages are divided by the group's standard deviation (Bessel-corrected)
    plus ``eps``, as GRPO does (and TRL's ``scale_rewards="group"``); a group whose rewards are all
    equal gets exactly 0. Without it (the default) this is Dr. GRPO's advantage (Liu et al. 2025,
    TRL's ``scale_rewards="none"``): the scaling makes every group's advantages about +-1 however
    little its rewards differ, so a judge's noise would take full-size steps.

    Args:
        rewards: ``(B, G)``, one row per prompt.
    Returns:
        ``(B, G)``.
    """
    r = _up(rewards)
    if baseline not in GROUP_BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {GROUP_BASELINES}")
    G = r.shape[-1]
    if G < 2:
        raise ValueError("a group needs at least 2 responses")
    centred = r - r.mean(-1, keepdim=True)
    adv = centred * (G / (G - 1)) if baseline == "rloo" else centred
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + eps)
    return adv


def kl_penalty_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                    normalizer: float | int | torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """GRPO's KL term (Shao et al. 2024 eq. 4): the ``k3`` estimate of ``KL(pi || ref)`` per token,
    ``ref/pi - log(ref/pi) - 1``, summed over unmasked tokens and divided by ``normalizer``, with
    the gradient flowing through ``logp``. Its value and gradient are 0 where ``pi = ref``."""
    k3 = kl_estimate(logp, ref_logp, "k3")
    m = mask.to(k3.dtype)
    n = m.sum().clamp(min=1.0) if normalizer is None else normalizer
    return (k3 * m).sum() / n, {"kl_k3": masked_mean(k3.detach(), m)}
