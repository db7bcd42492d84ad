"""Preference pairs whose label needs no pairwise judge: ``rlaif generate --pairs west-of-n | rlcd``.

* **West-of-N** (Pace et al. 2024, "West-of-N: Synthetic Preferences for Self-Improving Reward
  Models"): of the N samples of a prompt (``--samples N``; their final texts, after any critique
  and revision rounds), the best under a reward model or reward function is ``chosen`` and the
  worst is ``rejected``. The paper's "West-of-N" pair is exactly (best-of-N, worst-of-N) under the
  base reward model. As in ``rlaif bon`` (:func:`rlaif.pipeline.bon.pick`), a response cut at the
  token limit or empty takes no part, and a prompt whose best and worst are the same text or the
  same reward gives no pair. Rows keep both rewards and their gap.
* **RLCD** (Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive Distillation"): for
  each prompt and sample, a principle is sampled (weighted, seeded by the prompt id and sample) and
  two system prompts are made from its text, a positive one ("Your answer must follow this
  principle: ...") and a negative one ("... must go against this principle: ..."), identical
  otherwise. The policy answers the prompt under each (one seeded request each; the seed derives
  from the prompt id, the sample and the side). The positive answer is ``chosen`` by construction, and the
  row's ``prompt`` is the original prompt without either system prompt, as in the paper (the
  preference is learnt for the prompt, not for the instruction that produced it).

With ``--label``, the judge (the labeller of :mod:`rlaif.pipeline.judge`, both orders and the
ensemble as usual) also compares every constructed pair, shown with the chosen answer as ``a``:
each row gets ``judge_prob`` (the judge's P(chosen is better)), the manifest gets ``pair_check``
(how often the judge agrees with the construction) and the judge's diagnostics. The label stays the
construction's either way. Without ``--label`` no judge runs and ``judge_prob`` is empty.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any, Callable, Sequence

from rlaif.constitution import Constitution, Principle
from rlaif.data.records import Message, Trajectory
from rlaif.engine.base import ChatRequest, Engine
from rlaif.pipeline.judge import Pair
from rlaif.pipeline.judge_records import pair_from_row
from rlaif.seeds import derive_seed

CONSTRUCTED = ("west-of-n", "rlcd")
POSITIVE = "Your answer must follow this principle: {principle}"
NEGATIVE = "Your answer must go against this principle: {principle}"


# ------------------------------------------------------------------ RLCD


def rlcd_principle(const: Constitution, seed: int, prompt_id: str, sample: int) -> Principle:
    """The principle of one RLCD pair: weighted and reproducible, independent of chunking."""
    return const.sample_principles(random.Random(derive_seed(seed, prompt_id, sample, "rlcd")), 1)[0]


def principle_text(p: Principle) -> str:
    return f"{p.title.rstrip('.')}." + (f" {p.description.strip()}" if p.description.strip() else "")


def contrast_messages(const: Constitution, prompt: Sequence[Message], principle: Principle, positive: bool) -> tuple[Message, ...]:
    """The prompt under the positive or negative system prompt: the prompt's own system message (else the
    constitution's), then the contrast instruction made from the principle's title and description."""
    own = [m["content"] for m in prompt if m["role"] == "system"]
    base = own[0] if own else (const.system_prompt or "")
    line = (POSITIVE if positive else NEGATIVE).format(principle=principle_text(principle))
    system = f"{base}\n\n{line}" if base else line
    return ({"role": "system", "content": system}, *(m for m in prompt if m["role"] != "system"))


def contrast_stage(engine: Engine, const: Constitution, trajs: Sequence[Trajectory], seed: int, sampling, tag: str) -> list[dict[str, Any]]:
    """One batched call: the positive and the negative answer of every (prompt, sample) of the chunk."""
    jobs = [(t, rlcd_principle(const, seed, t.prompt_id, t.sample)) for t in trajs]
    reqs = [ChatRequest(contrast_messages(const, t.prompt, p, positive), derive_seed(seed, t.prompt_id, t.sample, "rlcd", positive),
                        tag=t.prompt_id) for t, p in jobs for positive in (True, False)]
    outs = engine.generate(reqs, sampling, desc=f"{tag} contrast")
    rows = []
    for k, (t, p) in enumerate(jobs):
        pos, neg = outs[2 * k], outs[2 * k + 1]
        failed = next((o for o in (pos, neg) if not o.ok), None)
        rows.append({"id": t.id, "principle": p.id, "positive": pos.text.strip(), "negative": neg.text.strip(),
                     "finish": [pos.finish_reason, neg.finish_reason], "tokens": [pos.completion_tokens, neg.completion_tokens],
                     "error": failed.error if failed else None, "retryable": bool(failed and failed.retryable)})
    return rows


# ------------------------------------------------------------------ West-of-N


def load_reward(reward_model: str | None, reward_fn: str | None, trust_remote_code: bool = False) -> Callable:
    """The reward of West-of-N: a sequence-classification reward model, or ``module:function``."""
    from rlaif.reward.functions import load_reward_fn
    from rlaif.reward.models import SequenceClassifierReward

    if reward_fn:
        return load_reward_fn(reward_fn)
    import torch

    from rlaif.models.model_zoo import resolve_model

    return SequenceClassifierReward(resolve_model(reward_model), "cuda" if torch.cuda.is_available() else "cpu",
                                    trust_remote_code=trust_remote_code)


def reward_rows(reward: Callable, trajs: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """The reward of every finished trajectory's final text (one call for the chunk)."""
    from rlaif.reward.functions import score

    ok = [t for t in trajs if t.status == "ok" and t.final]
    scores = score(reward, [list(t.prompt) for t in ok], [t.final for t in ok]).tolist() if ok else []
    return [{"id": t.id, "reward": float(r)} for t, r in zip(ok, scores)]


def _finish(t: Trajectory) -> str:
    last = next((r.revision for r in reversed(t.rounds) if r.revision.text), None) or t.initial
    return last.finish_reason if last else "error"


# ------------------------------------------------------------------ pairs and rows


@dataclasses.dataclass(frozen=True)
class Constructed:
    """One pair made by construction: ``chosen`` over ``rejected``, and what made it."""

    pair: Pair  # response_a = chosen, response_b = rejected
    extra: dict[str, Any]


def constructed(mode: str, trajs: Sequence[Trajectory], side: dict[str, Any]) -> list[Constructed]:
    """The chunk's pairs, the chosen answer as ``a`` (what the judge is shown when it checks them)."""
    out = []
    if mode == "rlcd":
        by_id = {t.id: t for t in trajs}
        for row in side.get("contrast", ()):
            t = by_id.get(row["id"])
            if t is None or row["error"] or not row["positive"] or not row["negative"] or row["positive"] == row["negative"]:
                continue
            pair = Pair(f"{t.id}:rlcd", t.prompt, row["positive"], row["negative"],
                        meta={"category": t.meta.get("category", ""), "a": f"{t.id}:positive", "b": f"{t.id}:negative"})
            out.append(Constructed(pair, {"principle_ids": [row["principle"]], "rlcd_principle": row["principle"]}))
        return out
    from rlaif.pipeline.bon import Candidate, pick

    rewards = {r["id"]: r["reward"] for r in side.get("rewards", ())}
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.prompt_id, []).append(t)
    for pid, group in groups.items():
        cands = [Candidate(t.sample, t.final or "", _finish(t), 0, rewards.get(t.id)) for t in group]
        best, worst = pick(cands)
        if best is None or worst is None:
            continue
        b, w = (next(t for t in group if t.sample == c.sample) for c in (best, worst))
        pair = Pair(f"{pid}:best~worst", b.prompt, best.text, worst.text,
                    meta={"category": b.meta.get("category", ""), "a": b.id, "b": w.id})
        out.append(Constructed(pair, {"chosen_reward": best.reward, "rejected_reward": worst.reward,
                                      "reward_gap": best.reward - worst.reward, "n": len(group)}))
    return out


def row_features(mode: str, provenance: dict[str, Any]):
    from datasets import Sequence as Seq, Value

    from rlaif.data.rows import preference_features

    extra = ({"chosen_reward": Value("float64"), "rejected_reward": Value("float64"), "reward_gap": Value("float64"),
              "n": Value("int64"), "reward_model": Value("string")} if mode == "west-of-n" else {"rlcd_principle": Value("string")})
    return preference_features({**provenance, "id": Value("string"), "response_ids": Seq(Value("string")),
                                "judge_prob": Value("float64"), **extra})


def rows_and_check(mode: str, items: Sequence[tuple[Constructed, Trajectory, Any]], const: Constitution, model_id: str,
                   provenance: Callable[[Trajectory], dict[str, Any]], reward_id: str | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Preference rows of the run's constructed pairs, and the judge's agreement with them (None unchecked).

    ``items``: (pair, its first trajectory, the judge's PairLabel or None).
    """
    from rlaif.data.rows import preference_row

    rows, tally = [], Counter()
    for c, t, lab in items:
        prov = provenance(t)
        row = preference_row(c.pair.prompt, c.pair.response_a, c.pair.response_b, mode, **prov, id=c.pair.id,
                             response_ids=[c.pair.meta["a"], c.pair.meta["b"]],
                             judge_prob=None if lab is None or lab.error else lab.p_a)
        row.update(c.extra)
        if mode == "west-of-n":
            row["reward_model"] = reward_id or ""
        rows.append(row)
        if lab is not None:
            tally["n"] += 1
            tally["failed"] += lab.error is not None
            tally["ties"] += lab.error is None and lab.chosen is None
            tally["agree"] += lab.chosen == "a"
    check = None
    if tally["n"]:
        judged = tally["n"] - tally["failed"]
        check = {"n": tally["n"], "judged": judged, "ties": tally["ties"], "failed": tally["failed"],
                 "agree": tally["agree"], "agreement": tally["agree"] / judged if judged else None}
    return rows, check


def constructed_rows(run, trajs: list[Trajectory], cfg, const: Constitution, model_id: str,
                     provenance: Callable[[Trajectory], dict[str, Any]]):
    """A finished generate run's preference rows of west-of-n or rlcd pairs, its counts, and with ``--label``
    the judge's check: its diagnostics and its agreement with the construction. ``provenance``: the
    columns every generated row carries, for a trajectory."""
    from rlaif.pipeline.label import finalise_labels, label_from_row

    side = {k: [r for i in sorted(run.committed()) for r in _side_rows(run, i, k)] for k in ("rewards", "contrast")}
    made = constructed(cfg.label.pairs, trajs, side)
    labels: dict[str, Any] = {}
    judge: dict[str, Any] = {}
    if cfg.label.enabled:
        raw = run.read_chunks("labels")
        read = [(pair_from_row(r.pop("pair")), label_from_row({k: v for k, v in r.items() if k != "feedback_model"})) for r in raw]
        _, judge = finalise_labels([p for p, _ in read], [l for _, l in read], cfg.label)
        labels = {p.id: l for p, l in read}
    by_id = {t.id: t for t in trajs}
    keys = ("prompt_id", "category", "constitution", "constitution_sha256", "principle_ids", "model", "rounds")
    rows, check = rows_and_check(cfg.label.pairs, [(c, by_id[c.pair.meta["a"].split(":")[0]], labels.get(c.pair.id)) for c in made],
                                 const, model_id, lambda t: {k: v for k, v in provenance(t).items() if k in keys},
                                 cfg.label.reward_model or cfg.label.reward_fn)
    counts = {"constructed_pairs": len(rows)}
    if labels:  # the judge's check, counted as generate counts AI labels
        checked = list(labels.values())
        counts.update(label_pairs=len(checked), label_failed=sum(l.error is not None for l in checked),
                      label_ties=sum(l.error is None and l.chosen is None for l in checked),
                      label_orders_agreed=sum(l.order_agreement == 1.0 for l in checked))
    return rows, counts, ({**judge, "pair_check": check} if cfg.label.enabled else {})


def _side_rows(run, index: int, name: str) -> list[dict[str, Any]]:
    return run.read_chunk(index, name) if (run.chunks / f"{index:05d}.{name}.jsonl").exists() else []
