"""Training losses: one pure function per equation. Imports only torch.

Conventions
-----------
* ``B`` is the number of examples (pairs for preference losses), ``T`` the
  sequence length, ``V`` the vocabulary size.
* Every loss returns ``(loss, metrics)``: ``loss`` is a scalar equal to the sum
  of per-example losses divided by ``normalizer`` (the batch size when it is
  not given). A trainer that accumulates gradients over several micro-batches
  passes the example (or token) count of the *whole* optimiser step, so that
  the summed micro-batch losses equal the loss of the full batch exactly.
  ``metrics`` are detached scalar means over the micro-batch.
* Label noise / soft labels: ``label_smoothing`` (a float or a ``(B,)`` tensor)
  is the probability ``eps`` that the recorded preference is the wrong way
  round. Each preference loss is then the *expected* loss under that noise,
  ``(1 - eps) * l(h) + eps * l_flipped(h)``. For the sigmoid loss this is
  conservative DPO (Mitchell 2023); an AI label ``chosen_prob = p`` enters as
  ``eps = 1 - p``, which makes the loss a cross-entropy against ``p``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are promoted to float32; float32/float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normalise(per_example: torch.Tensor, normalizer: float | int | None) -> torch.Tensor:
    n = per_example.shape[0] if normalizer is None else normalizer
    return per_example.sum() / n


def _as_eps(label_smoothing: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    eps = torch.as_tensor(label_smoothing, dtype=like.dtype, device=like.device)
    if bool(((eps < 0) | (eps > 1)).any()):
        raise ValueError("label_smoothing must lie in [0, 1]")
    return eps


# --------------------------------------------------------------------- log-probs
def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label token: ``log softmax(logits)[label]``.

    Args:
        logits: ``(B, T, V)``; ``logits[:, t]`` is the distribution of ``labels[:, t]``
            (the caller has already shifted by one position).
        labels: ``(B, T)`` token ids; masked positions may hold any valid id.

    Returns:
        ``(B, T)`` log-probabilities, float32 for half-precision logits.

    Computed as ``logit[label] - logsumexp(logits)`` in float32, which avoids
    materialising a second ``(B, T, V)`` tensor of log-probabilities.
    """
    logits = _up(logits)
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    token_logp: torch.Tensor, loss_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Log-probability of each completion: ``sum_t m_t log p_t`` (or its mean).

    Args:
        token_logp: ``(B, T)`` from :func:`token_logps`.
        loss_mask: ``(B, T)`` bool/0-1, true on completion tokens.
        average: divide by the number of completion tokens (the length
            normalisation of IPO as TRL implements it, and of SimPO, Meng et al.
            2024 eq. 4).

    Returns:
        ``(B,)`` float32.
    """
    mask = loss_mask.to(token_logp.dtype)
    total = (token_logp * mask).sum(-1)
    if average:
        total = total / mask.sum(-1).clamp(min=1.0)
    return total


# --------------------------------------------------------------------------- SFT
def sft_loss(
    token_logp: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | int | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy on completion (assistant) tokens only.

    ``L = -(1/N) sum_{b,t} m_{b,t} log p(y_{b,t} | y_{b,<t})`` where ``m`` masks out
    prompt, system/user turns and padding, and ``N = sum m`` (or ``normalizer``:
    the token count of the whole accumulated step).

    Args:
        token_logp: ``(B, T)`` from :func:`token_logps`.
        loss_mask: ``(B, T)`` bool/0-1.
        normalizer: tokens to divide by; defaults to ``loss_mask.sum()``.

    Returns:
        ``(loss, {"nll": mean NLL per trained token in this batch, "tokens": count})``.
    """
    mask = loss_mask.to(token_logp.dtype)
    n_tokens = mask.sum()
    nll_sum = -(token_logp * mask).sum()
    n = n_tokens.clamp(min=1.0) if normalizer is None else normalizer
    loss = nll_sum / n
    metrics = {
        "nll": (nll_sum / n_tokens.clamp(min=1.0)).detach(),
        "tokens": n_tokens.detach(),
    }
    return loss, metrics


# ------------------------------------------------------------------ reward model
def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_prob: torch.Tensor | float = 1.0,
    margin: torch.Tensor | float = 0.0,
    center_coef: float = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Bradley-Terry reward-model loss with soft labels, margin and centring.

    With ``d = r_c - r_r`` the model's probability that chosen wins is ``sigma(d)``
    (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1). Llama 2's margin loss
    (Touvron et al. 2023 eq. 2) asks the credited side to win by at least ``m``:
    ``-log sigma(d - m)``. Against an AI label ``p = chosen_prob`` (Lee et al. 2023,
    RLAIF, sec. 2.2: "trained on soft labels") the loss is the expectation over which
    side is better, and the margin always pushes towards the side being credited:

        ``l = p * [-log sigma(d - m)] + (1 - p) * [-log sigma(-d - m)]``

    So ``p = 1`` is Llama 2's loss, ``m = 0`` is the cross-entropy against ``p`` (optimum
    ``d = logit(p)``, loss ``H(p)``), and swapping chosen and rejected (``d -> -d``,
    ``p -> 1 - p``) leaves the loss unchanged. The loss is convex in ``d``; for
    ``0 < p < 1`` its minimum solves ``p sigma(m - d) = (1 - p) sigma(d + m)``, i.e. with
    ``x = e^d`` and ``k = e^{-m}``:

        ``(1 - p) k x^2 + (1 - 2p) x - p k = 0``,
        ``d* = log[((2p - 1) + sqrt((1 - 2p)^2 + 4 p (1 - p) k^2)) / (2 (1 - p) k)]``

    which is 0 at ``p = 1/2`` for every ``m``, and ``|d*| > |logit(p)|`` when ``m > 0``: with
    soft labels the margin stretches the reward gap beyond the judge's log-odds. In
    rlaif's labelled rows ``margin`` is the judge's 0-3 level, itself a function of
    ``chosen_prob``, so with both on the same confidence widens the gap twice; the
    margin is meant for hard labels or for levels that come from another source.

    The optional centring term ``center_coef * (r_c + r_r)^2`` (Eisenstein et al. 2023)
    pins the reward's free additive constant near zero.

    Args:
        chosen_rewards, rejected_rewards: ``(B,)`` scalar rewards.
        chosen_prob: ``(B,)`` or float in [0, 1].
        margin: ``(B,)`` or float >= 0, in reward units.
        center_coef: weight of the centring term.
        normalizer: pairs to divide by (default ``B``).

    Returns:
        ``(loss, metrics)`` with accuracy (``r_c > r_r``), mean margin ``r_c - r_r``
        and mean chosen / rejected rewards.
    """
    delta = _up(chosen_rewards) - _up(rejected_rewards)
    m = torch.as_tensor(margin, dtype=delta.dtype, device=delta.device)
    p = torch.as_tensor(chosen_prob, dtype=delta.dtype, device=delta.device)
    # chosen credited with probability p: it must win by m; rejected credited: it must win by m
    per_pair = -(p * F.logsigmoid(delta - m) + (1.0 - p) * F.logsigmoid(-delta - m))
    if center_coef:
        per_pair = per_pair + center_coef * (_up(chosen_rewards) + _up(rejected_rewards)) ** 2
    metrics = {
        "accuracy": (delta > 0).float().mean().detach(),
        "margin": delta.mean().detach(),
        "reward_chosen": _up(chosen_rewards).mean().detach(),
        "reward_rejected": _up(rejected_rewards).mean().detach(),
    }
    return _normalise(per_pair, normalizer), metrics


# ------------------------------------------------------------------- DPO family
def dpo_logits(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """Implicit reward difference ``h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]``.

    Rafailov et al. 2023, eq. 7 (the argument of the sigmoid, before ``beta``).
    All inputs ``(B,)`` sequence log-probabilities; returns ``(B,)``.
    """
    return (_up(policy_chosen) - _up(ref_chosen)) - (_up(policy_rejected) - _up(ref_rejected))


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    return {
        "accuracy": (chosen_rewards > rejected_rewards).float().mean().detach(),
        "margin": (chosen_rewards - rejected_rewards).mean().detach(),
        "reward_chosen": chosen_rewards.mean().detach(),
        "reward_rejected": rejected_rewards.mean().detach(),
    }


def _implicit_rewards(
    beta: float, policy_chosen, policy_rejected, ref_chosen, ref_rejected
) -> tuple[torch.Tensor, torch.Tensor]:
    # r(x, y) = beta * log(pi(y|x) / ref(y|x))   (Rafailov et al. 2023, eq. 5)
    return (
        beta * (_up(policy_chosen) - _up(ref_chosen)).detach(),
        beta * (_up(policy_rejected) - _up(ref_rejected)).detach(),
    )


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float | torch.Tensor = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, eq. 7) and conservative DPO (Mitchell 2023).

    ``l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)``, ``h`` from
    :func:`dpo_logits`. At ``h = 0`` the loss is ``log 2`` for every ``eps``. With
    ``eps = 1 - chosen_prob`` this is a cross-entropy against the AI label.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: ``(B,)``
            sequence log-probabilities (summed over completion tokens).
        beta: inverse temperature of the implicit reward.
        label_smoothing: ``eps``, float or ``(B,)`` in [0, 1].
        normalizer: pairs to divide by (default ``B``).
    """
    h = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = _as_eps(label_smoothing, h)
    per_pair = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    rc, rr = _implicit_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _normalise(per_pair, normalizer), _pair_metrics(rc, rr)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float | torch.Tensor = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, eq. 17): ``(h - 1/(2 beta))^2``, ``beta`` playing ``tau``.

    With label noise ``eps`` the pair is the other way round with probability
    ``eps``, where ``h`` changes sign, so the expected loss is
    ``(1 - eps)(h - c)^2 + eps(h + c)^2`` with ``c = 1/(2 beta)``; its minimum is at
    ``h = (1 - 2 eps) c``, i.e. the regression target ``(p - 1/2)/beta`` of the IPO
    population objective with preference probability ``p = 1 - eps``.
    TRL (and the IPO paper's experiments) use length-averaged log-probabilities
    here; the caller chooses by passing sums or means.
    """
    h = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = _as_eps(label_smoothing, h)
    c = 1.0 / (2.0 * beta)
    per_pair = (1.0 - eps) * (h - c) ** 2 + eps * (h + c) ** 2
    rc, rr = _implicit_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _normalise(per_pair, normalizer), _pair_metrics(rc, rr)


def hinge_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float | torch.Tensor = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Hinge loss of SLiC (Zhao et al. 2023, eq. 3) on the DPO log-ratio.

    ``l = max(0, 1 - beta h)``, as in TRL's ``loss_type="hinge"`` (``beta`` is
    the inverse of SLiC's margin ``delta``). With label noise ``eps``:
    ``(1 - eps) max(0, 1 - beta h) + eps max(0, 1 + beta h)``.
    """
    h = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = _as_eps(label_smoothing, h)
    per_pair = (1.0 - eps) * torch.relu(1.0 - beta * h) + eps * torch.relu(1.0 + beta * h)
    rc, rr = _implicit_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _normalise(per_pair, normalizer), _pair_metrics(rc, rr)


def rdpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.0,
    label_smoothing: float | torch.Tensor = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Length-regularised DPO, R-DPO (Park et al. 2024, "Disentangling Length from
    Quality in Direct Preference Optimization").

    R-DPO maximises ``E[r(x, y) - alpha |y|] - beta KL(pi || ref)``, whose optimal policy has
    ``r = beta log(pi / ref) + alpha |y| + const``; under Bradley-Terry the chosen answer wins
    with probability ``sigma(z)``, ``z = beta h + alpha (|y_w| - |y_l|)``, ``l = -log sigma(z)``
    (``h`` from :func:`dpo_logits`). Length explains part of the preference, so a pair whose
    chosen answer is longer needs *less* policy margin and the policy does not learn that
    length pays. Label noise ``eps`` flips the pair, i.e. the sign of ``z``:
    ``l = -(1 - eps) log sigma(z) - eps log sigma(-z)``, minimised at
    ``beta h* = logit(1 - eps) - alpha (|y_w| - |y_l|)``. ``alpha = 0`` is DPO.

    Worked example (the unit test): ``beta = 0.1``, ``alpha = 0.05``; log pi / log ref of
    chosen -10 / -12 and of rejected -9 / -8, so ``beta h = 0.1 (2 - (-1)) = 0.3``; chosen 20
    tokens and rejected 10, so ``z = 0.3 + 0.5 = 0.8`` and ``l = log(1 + e^-0.8) = 0.37110066..``
    (DPO: ``log(1 + e^-0.3) = 0.55435524..``; lengths swapped: ``z = -0.2``, ``l = 0.79813886..``).
    With ``eps = 0.25``: ``l = softplus(-0.8) + 0.25 * 0.8``, as ``softplus(x) - softplus(-x) = x``.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: ``(B,)`` sequence
            log-probabilities (summed over completion tokens, as in the paper).
        chosen_lengths, rejected_lengths: ``(B,)`` completion lengths in tokens.
        beta: inverse temperature of the implicit reward.
        alpha: weight of the length penalty ``alpha |y|`` in the reward, per token, >= 0.
        label_smoothing: ``eps``, float or ``(B,)`` in [0, 1].
        normalizer: pairs to divide by (default ``B``).

    Returns:
        ``(loss, metrics)``: DPO's pair metrics (implicit rewards ``beta * log-ratio``,
        without the length term) and ``length_penalty``, the mean ``alpha (|y_w| - |y_l|)``.
    """
    h = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    dlen = _up(chosen_lengths).to(h.dtype) - _up(rejected_lengths).to(h.dtype)
    z = beta * h + alpha * dlen  # r = beta log(pi / ref) + alpha |y| + const at the optimum
    eps = _as_eps(label_smoothing, h)
    per_pair = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    rc, rr = _implicit_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    metrics = _pair_metrics(rc, rr)
    metrics["length_penalty"] = (alpha * dlen).mean().detach()
    return _normalise(per_pair, normalizer), metrics


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float | torch.Tensor = 0.0,
    normalizer: float | int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO, reference-free (Meng et al. 2024, eq. 6).

    ``l = -log sigma(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma)`` with
    length-averaged log-probabilities (the caller passes means) and target
    margin ``gamma``; with label noise ``eps`` the flipped term is
    ``-log sigma(-(beta delta - gamma))`` as in TRL's CPO trainer. The implicit
    rewards logged are ``beta * avg log pi``.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` average per-token log-probs.
    """
    z = beta * (_up(policy_chosen) - _up(policy_rejected)) - gamma
    eps = _as_eps(label_smoothing, z)
    per_pair = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    rc = beta * _up(policy_chosen).detach()
    rr = beta * _up(policy_rejected).detach()
    return _normalise(per_pair, normalizer), _pair_metrics(rc, rr)


#: Reference-based preference losses by name, all with the same signature.
PAIR_LOSSES = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
}
#: Every preference loss a DPO config may name (R-DPO also takes the lengths; SimPO has no reference).
DPO_LOSS_TYPES = (*PAIR_LOSSES, "rdpo", "simpo")


def soft_label_noise(chosen_prob: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Flip probability ``eps_i`` from an AI label and a global smoothing ``eps``.

    The target probability that chosen is better is the AI label smoothed towards
    1/2: ``q = (1 - eps) p + eps (1 - p)``; the loss functions above take its
    complement ``1 - q``. With ``p = 1`` this is plain label smoothing ``eps``
    (cDPO); with ``eps = 0`` it is ``1 - p``.

    Args:
        chosen_prob: ``(B,)`` AI probability ``p`` that chosen is better.
        label_smoothing: global ``eps`` in [0, 1/2].
    Returns:
        ``(B,)`` ``1 - q``.
    """
    p = chosen_prob
    return 1.0 - ((1.0 - label_smoothing) * p + label_smoothing * (1.0 - p))
