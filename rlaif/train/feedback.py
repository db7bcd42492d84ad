"""AI feedback inside online training: rlaif's labeller judging the responses a policy just sampled.

The judge is :func:`rlaif.pipeline.judge.label_pairs`, as in ``rlaif label``: for each pair,
principles sampled by the pair's id, both orders, the ensemble mean, ties. This module adds
what an online trainer needs around it:

* :class:`JudgeConfig` and :func:`make_judge`: the feedback model is the policy itself (the rollout
  engine answers: self-rewarding), a separate frozen model in its own in-process engine, or a
  served model (``backend: openai``);
* :class:`MeteredJudge`: judge cost per step (engine calls, requests, prompt tokens, tokens the
  engine's prefix cache served, seconds);
* :func:`pairings` and :func:`judge_groups`: the pairs of a group of responses to one prompt
  (all pairs or a circular pairing), all of a step's groups judged in one batch; the requests of
  a pair (principles x orders) are adjacent and every pair of a group shares the conversation,
  so vLLM's prefix cache computes those prefixes once;
* :func:`win_rates`: each response's mean P(it is better) over its pairs (a tie counts 1/2);
* :class:`PairLog`: every step's judged pairs committed to ``RUN/pairs/`` and gathered into a
  preference dataset ``RUN/preferences/`` (the format ``rlaif label`` writes), so an online run
  also leaves reusable data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from rlaif.engine.config import EngineConfig
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel, label_pairs

def judge_engine() -> EngineConfig:
    """A separate judge's engine defaults: 0.5 GiB of KV cache, 2048 tokens of context."""
    return EngineConfig(kv_cache_gib=0.5, max_model_len=2048)


@dataclass(frozen=True)
class JudgeConfig(LabelSettings):
    """The constitution judge of online DPO and GRPO: how pairs are judged (the fields of
    :class:`rlaif.pipeline.judge.LabelSettings`, the one labelling dataclass, as ``judge.ensemble``
    etc.), by which model, in which engine (``judge.engine``, an :class:`EngineConfig`)."""

    model: str = "default"
    """Feedback model: "policy" (the policy judges its own samples through the rollout engine:
    self-rewarding), "default" or a model folder (a frozen judge in its own engine), or with
    ``engine.backend: openai`` the model's name on the server."""
    engine: EngineConfig = field(default_factory=judge_engine)
    """A separate judge's engine: ``backend`` "vllm", "transformers", "openai" (a server at
    ``base_url``) or "fake" (tests); memory, precision, prefix cache and block size."""
    constitution: str = "default"
    """Whose comparison questions are asked: a constitution name or YAML file."""
    principles_dir: str | None = None
    """Principles folder (default: the constitution's)."""
    ensemble: int = 2
    """Principles sampled per pair (distinct, weighted, seeded by the pair id); the label is their mean."""
    max_response_chars: int = 4000
    """Longer responses are cut before the judge reads them (and the pair flagged)."""
    retries: int = 2
    """Times a step judges again the pairs whose requests failed for now (after the engine's own retries);
    pairs still failing then checkpoint the run and stop it (exit status 4; rerunning continues)."""

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as exc:
            raise ValueError(f"judge: {exc}") from None
        if self.model == "policy" and self.engine.backend != "vllm":
            raise ValueError("judge.model: policy judges with the rollout engine; leave judge.engine.backend at vllm")
        if self.seed:
            raise ValueError("judge.seed: the judge's principle draws follow the run's seed (set seed)")
        if self.retries < 0:
            raise ValueError("judge.retries must be >= 0")
        if self.length_control or self.keep_ties:
            raise ValueError("judge.length_control and judge.keep_ties are for labelled runs (rlaif label, rlaif generate "
                             "--label); an online judge skips and counts ties, and has no run to fit length control on")

    def label_settings(self, seed: int) -> LabelSettings:
        """The labelling settings alone, seeded with the run's seed."""
        return LabelSettings(**{f.name: getattr(self, f.name) for f in fields(LabelSettings) if f.name != "seed"}, seed=seed)


def make_judge(jc: JudgeConfig, policy_engine, seed: int, trust_remote_code: bool = False):
    """The judge's engine and whether the caller owns it (a separate engine) or not (the policy's)."""
    from rlaif.engine import create_engine

    if jc.model == "policy":
        return policy_engine, False
    e = jc.engine
    if e.backend in ("openai", "fake"):  # a name on the server (None: its first model), or the scripted fake
        name = None if e.backend == "openai" and jc.model == "default" else jc.model
        return create_engine(name, e, show_progress=False), True
    from .common import resolve_model_path

    return create_engine(resolve_model_path(jc.model), e, seed=seed, show_progress=False,
                         trust_remote_code=trust_remote_code or e.trust_remote_code), True


class MeteredJudge:
    """Wraps a judge engine and counts what judging costs (see :meth:`take`)."""

    def __init__(self, engine):
        self.engine = engine
        self.model = getattr(engine, "model", "judge")
        self.reset()

    def reset(self) -> None:
        self.calls = self.requests = self.prompt_tokens = self.cached_tokens = 0
        self.seconds = 0.0

    def _count(self, t0: float, outs: Sequence[Any]) -> None:
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.requests += len(outs)
        self.prompt_tokens += sum(int(getattr(o, "prompt_tokens", 0) or 0) for o in outs)
        self.cached_tokens += sum(int(getattr(o, "cached_tokens", 0) or 0) for o in outs)

    def score_options(self, requests, options, desc: str = ""):
        t0 = time.perf_counter()
        out = self.engine.score_options(requests, options, desc=desc)
        self._count(t0, out)
        return out

    def generate(self, requests, sampling, desc: str = ""):
        t0 = time.perf_counter()
        out = self.engine.generate(requests, sampling, desc=desc)
        self._count(t0, out)
        return out

    def take(self, pairs: int, prefix: str = "judge/") -> dict[str, float]:
        """The counts since the last take, as metrics, then reset."""
        prefill = self.prompt_tokens - self.cached_tokens
        out = {"calls": self.calls, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
               "cached_tokens": self.cached_tokens, "prefill_tokens": prefill,
               "prefill_tokens_per_pair": prefill / pairs if pairs else 0.0, "seconds": self.seconds}
        self.reset()
        return {prefix + k: float(v) for k, v in out.items()}

    def close(self) -> None:
        self.engine.close()


# ------------------------------------------------------------------ groups
def pairings(n: int, kind: str) -> list[tuple[int, int]]:
    """The pairs judged among ``n`` responses to one prompt: ``all`` (every unordered pair) or
    ``circular`` (response i against i + 1, the last against the first: n pairs, each response in two)."""
    if kind not in ("all", "circular"):
        raise ValueError(f"pairing must be 'all' or 'circular', got {kind!r}")
    if kind == "all" or n <= 3:  # for n <= 3 the circle is every pair (n = 2: the one pair, once)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(i, (i + 1) % n) for i in range(n)]


@dataclass(frozen=True)
class Judged:
    """One judged pair of a group: responses ``i`` (shown as a) and ``j`` (b) and the label."""

    group: int
    i: int
    j: int
    pair: Pair
    label: PairLabel


def judge_groups(judge, const, settings: LabelSettings, groups: Sequence[tuple[list[dict], list[str], str]],
                 kind: str, desc: str = "judge", retries: int | None = None) -> list[list[Judged]]:
    """Judge the pairs of every group in one batch. A group is ``(prompt messages, responses, id)``;
    the pair ids ``"{id}:{i}-{j}"`` seed each pair's principles. With ``retries``, pairs whose label
    failed for now are judged again (same ids, so the same labels a first success would give) up to
    that many times, and pairs still failing raise :class:`rlaif.engine.failures.ServerGone`."""
    pairs, where = [], []
    for g, (prompt, responses, gid) in enumerate(groups):
        for i, j in pairings(len(responses), kind):
            pairs.append(Pair(f"{gid}:{i}-{j}", tuple(prompt), responses[i], responses[j]))
            where.append((g, i, j))
    labels = label_pairs(judge, const, pairs, settings, desc=desc) if pairs else []
    for _ in range(retries or 0):
        again = [k for k, lab in enumerate(labels) if lab.error and lab.retryable]
        if not again:
            break
        for k, lab in zip(again, label_pairs(judge, const, [pairs[k] for k in again], settings, desc=f"{desc} again")):
            labels[k] = lab
    left = [lab for lab in labels if lab.error and lab.retryable]
    if retries is not None and left:
        from rlaif.engine.failures import ServerGone

        raise ServerGone(f"the judge ({getattr(judge, 'model', 'judge')}) failed {len(left)} of {len(labels)} pairs ({desc}) "
                         f"after {retries} more tries within the step (the last error: {left[-1].error})")
    out: list[list[Judged]] = [[] for _ in groups]
    for (g, i, j), pair, lab in zip(where, pairs, labels):
        out[g].append(Judged(g, i, j, pair, lab))
    return out


def win_rates(n: int, judged: Sequence[Judged]) -> list[float]:
    """Each response's mean P(it is the better one) over its judged pairs; a tie counts 1/2, a
    failed label not at all (a response without a usable label gets 1/2)."""
    total, count = [0.0] * n, [0] * n
    for x in judged:
        if x.label.error is not None:
            continue
        p = 0.5 if x.label.chosen is None else x.label.p_a
        total[x.i] += p
        total[x.j] += 1.0 - p
        count[x.i] += 1
        count[x.j] += 1
    return [t / c if c else 0.5 for t, c in zip(total, count)]


def label_metrics(judged: Sequence[Judged], prefix: str = "judge/") -> dict[str, float]:
    """Pairs, ties (skipped), tie rate, failures and the share of principles whose two orders agreed."""
    labs = [x.label for x in judged]
    ok = [lab for lab in labs if lab.error is None]
    ties = sum(lab.chosen is None for lab in ok)
    scored = [lab for lab in ok if "identical" not in lab.flags]
    return {f"{prefix}pairs": float(len(labs)), f"{prefix}ties": float(ties),
            f"{prefix}tie_rate": ties / len(ok) if ok else 0.0, f"{prefix}failed": float(len(labs) - len(ok)),
            f"{prefix}identical": float(len(ok) - len(scored)),
            f"{prefix}order_agreement": sum(lab.order_agreement for lab in scored) / len(scored) if scored else 0.0}


# ------------------------------------------------------------------ the run's preference dataset
class PairLog:
    """Every step's judged pairs, one committed file per step (``RUN/pairs/00007.jsonl``), and the
    preference dataset built from all of them (``RUN/preferences/`` and ``preferences.jsonl``).

    A resumed run drops the files of steps after its checkpoint (they are judged again, identically)."""

    def __init__(self, run_dir: Path, resume_step: int):
        from rlaif.data.runs import RunDir

        self.run = RunDir(run_dir, chunks="pairs")
        for step in self.run.committed():
            if step >= resume_step:  # file k holds iteration k (0-based): redone from the checkpoint
                for f in self.run.chunks.glob(f"{step:05d}.*"):
                    f.unlink()

    def commit(self, iteration: int, judged: Sequence[Judged], trained: set[tuple[int, int, int]],
               feedback_model: str, prompt_ids: Sequence[str]) -> int:
        """Write iteration ``iteration``'s pairs that name a side (ties and failures are left out);
        ``trained`` holds the (group, i, j) that went into the update. Returns the rows written."""
        from rlaif.pipeline.label import ai_preference_row

        rows = []
        for x in judged:
            if x.label.error is not None or x.label.chosen is None:
                continue
            row = ai_preference_row(x.pair, x.label, feedback_model)
            row.update(step=iteration + 1, prompt_id=str(prompt_ids[x.group]), trained=(x.group, x.i, x.j) in trained)
            rows.append(row)
        self.run.commit_chunk(iteration, rows, {"step": iteration + 1, "pairs": len(rows)})
        return len(rows)

    def build(self) -> int:
        """Gather every committed step into ``RUN/preferences``; returns its rows."""
        from datasets import Value

        from rlaif.pipeline.label import ai_preference_features

        rows = self.run.read_chunks()
        feats = ai_preference_features({"step": Value("int64"), "prompt_id": Value("string"), "trained": Value("bool")})
        self.run.save_dataset("preferences", rows, feats)
        return len(rows)
