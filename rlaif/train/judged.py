"""The session of an online trainer whose signal comes from the constitution judge (online DPO, GRPO).

Shared by :mod:`rlaif.train.online_dpo` and :mod:`rlaif.train.grpo`: settings (:class:`JudgedConfig`),
set-up (policy, frozen reference, rollout engine, judge, optimiser, resume, first weight sync),
the probe (the judge's win rate of the current policy's samples against the starting policy's on a
fixed prompt set), saving and clean-up. The maths lives in the trainers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlaif.data import textio

from . import online
from .checkpoint import MetricsLog
from .common import Dist, autocast_context, autocast_dtype, load_tokenizer, resolve_model_path, save_final, seed_everything, setup_device, unwrap
from .feedback import JudgeConfig, MeteredJudge, PairLog, judge_groups, label_metrics, make_judge
from .online import OnlineConfig


@dataclass
class JudgedConfig(OnlineConfig):
    """Settings of the trainers that learn from the judge's comparisons."""

    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The constitution judge (feedback model, ensemble, ties)."""
    probe_size: int = 8
    """Prompts of the probe set (the held-out prompts when eval_fraction or eval_data gives some, else
    the first of a seeded shuffle of the training prompts); 0 = no probe. The probe runs every
    eval_every iterations and at the end."""
    save_pairs: bool = True
    """Append every step's judged pairs to RUN/pairs/ and build RUN/preferences/ from them."""

    def __post_init__(self):
        super().__post_init__()
        if self.probe_size < 0:
            raise ValueError("probe_size must be >= 0")


@dataclass
class JudgedSession:
    cfg: JudgedConfig
    policy: Any
    ref: Any
    tokenizer: Any
    engine: Any
    judge: MeteredJudge | None
    const: Any
    prompts: list
    prompt_ids: list[list[int]]
    probe_prompts: list
    probe_ids: list[list[int]]
    dist: Dist
    amp: torch.dtype | None
    owns_engine: bool = True
    owns_judge: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # the trainer's own (reward model, reward function)
    models: Any = None
    optimizer: Any = None
    scheduler: Any = None
    position: dict[str, Any] = field(default_factory=lambda: {"step": 0})
    total_steps: int = 0
    log: MetricsLog | None = None
    pair_log: PairLog | None = None
    probe_reference: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def autocast(self):
        return autocast_context(self.dist, self.amp)

    @property
    def label_settings(self):
        return self.cfg.judge.label_settings(self.cfg.seed)


def probe_set(cfg: JudgedConfig, prompts, ids, ev, ev_ids):
    """The fixed probe prompts: held-out ones if any, else the first ``probe_size`` of a seeded shuffle."""
    import random

    if cfg.probe_size == 0:
        return [], []
    if ev:
        return ev[: cfg.probe_size], ev_ids[: cfg.probe_size]
    order = list(range(len(prompts)))
    random.Random(f"{cfg.seed}:probe").shuffle(order)
    keep = order[: cfg.probe_size]
    return [prompts[i] for i in keep], [ids[i] for i in keep]


def setup(cfg: JudgedConfig, what: str, updates_per_iteration: int, engine=None, judge=None,
          need_judge: bool = True) -> JudgedSession:
    """Models, prompts, engine, judge, optimiser; resume from a checkpoint; sync the engine; the
    probe's reference samples. ``engine`` (a running ``VLLMEngine``) and ``judge`` (any engine that
    scores options) override the config; neither is closed by :func:`cleanup` when passed in."""
    from rlaif.constitution import load_constitution

    d = setup_device(cfg)
    online.single_process(d, what)
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train_p, train_ids, ev_p, ev_ids = online.load_prompts(cfg, tok)
    probe_p, probe_ids = probe_set(cfg, train_p, train_ids, ev_p, ev_ids)
    const = load_constitution(cfg.judge.constitution, cfg.judge.principles_dir) if need_judge or probe_p else None
    policy, ref = online.load_policy_and_reference(cfg, path, d)
    s = JudgedSession(cfg, policy, ref, tok, engine, None, const, train_p, train_ids, probe_p, probe_ids, d,
                      autocast_dtype(cfg, d.device), owns_engine=engine is None, owns_judge=judge is None)
    s.models = torch.nn.ModuleDict({"policy": unwrap(policy)})
    s.total_steps = online.total_iterations(cfg, len(train_p))
    s.optimizer, s.scheduler = online.build_optimizer([(policy, cfg.lr)], cfg, s.total_steps * updates_per_iteration)
    online.resume_or_start(s, {"step": 0})
    if cfg.save_pairs and need_judge:
        s.pair_log = PairLog(s.run_dir, s.position["step"])
    try:
        if s.engine is None:
            s.engine = online.make_engine(cfg, path)
        if const is not None:
            if judge is None:
                judge, s.owns_judge = make_judge(cfg.judge, s.engine, cfg.seed, cfg.trust_remote_code)
            s.judge = MeteredJudge(judge)
        if not load_probe_reference(s):
            online.sync_weights(s)  # the engine always serves the trainer's weights, resumed ones included
    except BaseException:
        cleanup(s)
        raise
    return s


def _probe_seeds(s: JudgedSession) -> list[int]:
    return [online.seed(s.cfg.seed, "probe", r.id) for r in s.probe_prompts]


def load_probe_reference(s: JudgedSession) -> bool:
    """The starting policy's probe samples (one per probe prompt, fixed seeds), sampled at the start
    of a fresh run and kept in ``RUN/probe_reference.jsonl`` so that a resumed run compares with the
    same ones. Returns whether the engine was synced with the trainer's weights on the way."""
    if not s.probe_prompts:
        return False
    path = s.run_dir / "probe_reference.jsonl"
    want = [r.id for r in s.probe_prompts]
    if path.exists() and s.position["step"] > 0:
        rows = textio.read_jsonl(path)
        if [r["id"] for r in rows] == want:
            s.probe_reference = [r["response"] for r in rows]
            return False
        raise ValueError(f"{path} holds samples of other probe prompts; start over (resume=false)")
    if s.position["step"] > 0:
        raise ValueError(f"{path} is missing: the probe's reference samples of this run are gone; start over (resume=false)")
    online.sync_weights(s)  # the starting policy, whatever engine was handed in
    samples = s.engine.sample_tokens(s.probe_ids, _probe_seeds(s), s.cfg.max_new_tokens, s.cfg.temperature)
    s.probe_reference = [x.text for x in samples]
    from rlaif.data.runs import atomic_write_text

    atomic_write_text(path, textio.dumps_jsonl({"id": i, "response": t} for i, t in zip(want, s.probe_reference)))
    return True


@torch.no_grad()
def probe(s: JudgedSession, it: int) -> dict[str, float]:
    """The judge's win rate of the current policy's samples against the starting policy's on the
    probe prompts (same seeds; a tie counts 1/2), with the soft win rate and the tie rate."""
    if not s.probe_prompts or s.judge is None:
        return {}
    samples = s.engine.sample_tokens(s.probe_ids, _probe_seeds(s), s.cfg.max_new_tokens, s.cfg.temperature)
    s.judge.take(0)
    groups = [(list(r.messages), [x.text, ref], f"probe:{it}:{r.id}")
              for r, x, ref in zip(s.probe_prompts, samples, s.probe_reference)]
    judged = [g[0] for g in judge_groups(s.judge, s.const, s.label_settings, groups, "all", desc="probe",
                                         retries=s.cfg.judge.retries)]
    ok = [x.label for x in judged if x.label.error is None]
    win = [1.0 if lab.chosen == "a" else 0.5 if lab.chosen is None else 0.0 for lab in ok]
    m = {"probe/win_rate": sum(win) / len(win) if win else 0.5,
         "probe/soft_win_rate": sum(lab.p_a for lab in ok) / len(ok) if ok else 0.5,
         "probe/response_length": sum(len(x.response_ids) for x in samples) / len(samples)}
    m.update({k.replace("judge/", "probe/"): v for k, v in label_metrics(judged).items() if k.endswith(("tie_rate", "failed"))})
    m.update(s.judge.take(len(judged), prefix="probe/judge_"))
    return m


def judge_step(s: JudgedSession, it: int, recs, texts: list[str], kind: str):
    """Judge the pairs of every group (``samples_per_prompt`` consecutive responses per prompt) of
    iteration ``it``; returns the judged pairs per group and the judge's metrics."""
    k = s.cfg.samples_per_prompt
    groups = [(list(recs[g * k].messages), texts[g * k : (g + 1) * k], f"{it}:{recs[g * k].id}")
              for g in range(len(texts) // k)]
    s.judge.take(0)
    judged = judge_groups(s.judge, s.const, s.label_settings, groups, kind, desc=f"judge {it + 1}", retries=s.cfg.judge.retries)
    flat = [x for g in judged for x in g]
    return judged, {**label_metrics(flat), **s.judge.take(len(flat))}


def commit_pairs(s: JudgedSession, it: int, judged, trained: set, recs) -> None:
    if s.pair_log is None or s.judge is None:
        return
    from rlaif.engine import answered_by

    k = s.cfg.samples_per_prompt
    flat = [x for g in judged for x in g]
    s.pair_log.commit(it, flat, trained, answered_by(s.judge.engine), [recs[g * k].id for g in range(len(judged))])


def save(s: JudgedSession) -> Path:
    if s.pair_log is not None:
        n = s.pair_log.build()
        print(f"[rlaif.train] {n} judged pairs saved as a preference dataset in {s.run_dir / 'preferences'}")
    return save_final(s.policy, s.tokenizer, s.run_dir / "final", s.cfg)


def cleanup(s: JudgedSession) -> None:
    if s.judge is not None and s.owns_judge:
        s.judge.close()
    s.judge = None
    online.close(s)


def main(cfg: JudgedConfig, setup_fn: Callable, train_fn: Callable, keys: tuple[str, ...]) -> int:
    s = setup_fn(cfg)
    try:
        metrics = train_fn(s)
        out = save(s)
    finally:
        cleanup(s)
    print(f"[rlaif.train] policy saved to {out}; " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))
    return 0
