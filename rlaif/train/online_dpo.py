"""Online DPO with AI feedback (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"): the preference pairs come from the current policy and the constitution judge, step by step.

Each iteration:

1. **sample**: ``rollout_batch_size`` prompts, ``samples_per_prompt`` (k >= 2) responses each, from
   the in-process vLLM engine that holds the current policy;
2. **judge**: every pair of a prompt's k responses is labelled by rlaif's labeller (principles sampled
   per pair, both orders, ensemble; :mod:`rlaif.train.feedback`); pairs the judge calls a tie are
   skipped and counted;
3. **pairs**: ``best-worst`` trains the pair of the response with the highest mean win probability
   against the one with the lowest (for k = 2: the one pair), ``all`` every judged pair that names a
   side; each is oriented by the judge's label of that pair, and its soft label is ``chosen_prob``;
4. **update**: one optimiser step of a DPO-family loss (``sigmoid``: DPO, or cDPO with the soft
   label and ``label_smoothing``; ``ipo``; ``hinge``; ``simpo``) against the frozen reference,
   over all of the iteration's pairs (micro-batches of ``batch_size`` pairs);
5. **sync**: the new weights go into the engine.

The sequence log-probabilities are those of the very tokens the engine sampled (no re-tokenisation),
at temperature 1. Every iteration's judged pairs are committed to ``RUN/pairs/`` and gathered into
``RUN/preferences/`` at the end. ``max_steps`` counts iterations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import judged as jd
from . import online, rollout
from .config import load_config
from .dpo import DPO_BETA, SIMPO_BETA, SIMPO_GAMMA_BETA_RATIO
from .feedback import Judged, win_rates
from .losses import PAIR_LOSSES, simpo_loss, soft_label_noise
from .rl_losses import kl_estimate

ONLINE_DPO_LOSSES = (*PAIR_LOSSES, "simpo")
PAIRINGS = ("best-worst", "all")


@dataclass
class OnlineDPOConfig(jd.JudgedConfig):
    name: str = "online-dpo"
    rollout_batch_size: int = 8
    samples_per_prompt: int = 2
    """Responses per prompt (k >= 2); every pair of them is judged."""
    lr: float = 5e-7
    loss: str = "sigmoid"
    """"sigmoid" (DPO; cDPO with soft labels or label_smoothing), "ipo", "hinge" or "simpo" (no reference)."""
    beta: float | None = None
    """Inverse temperature of the implicit reward (default 0.1; SimPO 2.0)."""
    label_smoothing: float = 0.0
    """Probability that a label is flipped, in [0, 0.5) (cDPO)."""
    soft_labels: bool = True
    """Train on the judge's chosen_prob (smoothed by label_smoothing) instead of a hard 1."""
    simpo_gamma: float | None = None
    """SimPO's target margin (default 0.5 x beta)."""
    length_average: bool | None = None
    """Average log-probs over response tokens (default: true for ipo and simpo)."""
    pairs: str = "best-worst"
    """Which judged pairs train: "best-worst" (one per prompt) or "all"."""

    def __post_init__(self):
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ValueError("online DPO compares responses: samples_per_prompt must be >= 2")
        if self.loss not in ONLINE_DPO_LOSSES:
            raise ValueError(f"loss must be one of {ONLINE_DPO_LOSSES}")
        if self.pairs not in PAIRINGS:
            raise ValueError(f"pairs must be one of {PAIRINGS}")
        if self.grad_accum != 1:
            raise ValueError("online DPO takes one optimiser step per iteration over all of that iteration's pairs "
                             "(batch_size is the micro-batch); grad_accum must stay 1")
        if self.beta is None:
            self.beta = SIMPO_BETA if self.loss == "simpo" else DPO_BETA
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must lie in [0, 0.5)")
        if self.loss == "simpo":
            if self.length_average is False:
                raise ValueError("loss: simpo uses length-averaged log-probs; length_average: false is not SimPO")
            self.simpo_gamma = SIMPO_GAMMA_BETA_RATIO * self.beta if self.simpo_gamma is None else self.simpo_gamma
            if self.simpo_gamma < 0:
                raise ValueError("simpo_gamma must be >= 0")
        elif self.simpo_gamma is not None:
            raise ValueError(f"simpo_gamma applies to loss: simpo only, not {self.loss}")
        if self.length_average is None:
            self.length_average = self.loss in ("ipo", "simpo")


def setup(cfg: OnlineDPOConfig, engine=None, judge=None) -> jd.JudgedSession:
    """See :func:`rlaif.train.judged.setup`: one optimiser step per iteration."""
    return jd.setup(cfg, "online DPO", 1, engine=engine, judge=judge)


def choose_pairs(k: int, group: list[Judged], how: str) -> list[tuple[int, int, float, tuple[int, int, int]]]:
    """The training pairs of one group: (chosen, rejected, chosen_prob, (group, i, j)) with indices
    into the group. Ties and failed labels never train."""
    usable = [x for x in group if x.label.error is None and x.label.chosen is not None]

    def oriented(x: Judged):
        c, r = (x.i, x.j) if x.label.chosen == "a" else (x.j, x.i)
        return c, r, x.label.chosen_prob, (x.group, x.i, x.j)

    if how == "all":
        return [oriented(x) for x in usable]
    wins = win_rates(k, group)
    best, worst = wins.index(max(wins)), wins.index(min(wins))
    if best == worst:
        return []
    direct = [x for x in usable if {x.i, x.j} == {best, worst}]
    return [oriented(direct[0])] if direct else []


def sequence_logps(token_logp: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    total = (token_logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if average else total


def update(s: jd.JudgedSession, batch, ref_logp: torch.Tensor, pairs: list) -> dict[str, float]:
    """One optimiser step of the DPO-family loss over ``pairs`` (chosen row, rejected row, chosen_prob)."""
    cfg, n = s.cfg, len(pairs)
    out: dict[str, float] = {"pairs_trained": float(n)}
    if n:
        s.policy.train()
        sums: dict[str, float] = {}
        for lo in range(0, n, cfg.batch_size):
            part = pairs[lo : lo + cfg.batch_size]
            b = len(part)
            idx = torch.tensor([c for c, _, _ in part] + [r for _, r, _ in part])
            sub = {k: v.to(s.dist.device) for k, v in rollout.select(batch, idx).items()}
            m = sub["response_mask"]
            ref = sequence_logps(ref_logp[idx, : m.shape[1]].to(m.device), m, cfg.length_average)
            p = torch.tensor([q for _, _, q in part], device=m.device) if cfg.soft_labels else torch.ones(b, device=m.device)
            eps = soft_label_noise(p, cfg.label_smoothing)
            with s.autocast():
                lp, _ = rollout.response_logps(s.policy, sub, 1.0)
                seq = sequence_logps(lp.float(), m, cfg.length_average)
                if cfg.loss == "simpo":
                    loss, lm = simpo_loss(seq[:b], seq[b:], cfg.beta, cfg.simpo_gamma, eps, n)
                else:
                    loss, lm = PAIR_LOSSES[cfg.loss](seq[:b], seq[b:], ref[:b], ref[b:], cfg.beta, eps, n)
            loss.backward()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in lm.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b / n
        norm = online.step_policy(s)
        if norm is not None:
            out["grad_norm"] = norm
        out.update(sums)
        out["chosen_prob"] = sum(q for _, _, q in pairs) / n
    out["lr"] = s.optimizer.param_groups[0]["lr"]
    s.scheduler.step()  # every iteration, with or without pairs: the schedule is a function of the iteration
    return out


def iteration(s: jd.JudgedSession, it: int) -> dict[str, float]:
    """Sample, judge, choose pairs, update and sync for iteration ``it``; returns its metrics."""
    cfg, k = s.cfg, s.cfg.samples_per_prompt
    t0 = time.perf_counter()
    recs, samples = online.sample(s, it, "online-dpo")
    t_sample = time.perf_counter()
    judged, m = jd.judge_step(s, it, recs, [x.text for x in samples], "all")
    t_judge = time.perf_counter()
    pairs, trained = [], set()
    for g, group in enumerate(judged):
        for c, r, q, key in choose_pairs(k, group, cfg.pairs):
            pairs.append((g * k + c, g * k + r, q))
            trained.add(key)
    batch = rollout.collate(samples, s.tokenizer.pad_token_id)
    tok = online.score_tokens(s, batch, cfg.temperature)
    ref1 = tok["ref_logp"] if cfg.temperature == 1.0 else online.score_tokens(s, batch, 1.0)["ref_logp"]
    t_score = time.perf_counter()
    up, update_s, sync_s = online.update_and_sync(s, lambda: update(s, batch, ref1, pairs))
    m.update(up)
    t_end = time.perf_counter()
    jd.commit_pairs(s, it, judged, trained, recs)
    kl = kl_estimate(tok["old_logp"], tok["ref_logp"], "k3") * batch["response_mask"]
    m.update({
        "kl": online.mean(kl.sum(-1)), **online.sample_metrics(batch, tok),
        "time/sample_s": t_sample - t0, "time/judge_s": t_judge - t_sample, "time/score_s": t_score - t_judge,
        "time/update_s": update_s,
        "time/sync_s": sync_s, "time/iteration_s": t_end - t0, "judge/time_share": (t_judge - t_sample) / (t_end - t0),
    })
    return {f"train/{key}": v for key, v in m.items()}


def train(s: jd.JudgedSession) -> dict[str, float]:
    return online.train_loop(s, iteration, jd.probe, postfix=("train/loss", "train/kl", "train/judge/tie_rate"))


save, cleanup = jd.save, jd.cleanup


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    cfg = load_config(OnlineDPOConfig, config_path, overrides)
    return jd.main(cfg, setup, train, ("train/loss", "train/kl", "train/judge/tie_rate", "probe/win_rate"))
