"""``rlaif constitution audit``: how the judge's preference moves under probes, no reference labels needed.

An *item* is two answers to one conversation judged under one principle: a test case, or a
pair of a labelled run with one of the principles it was labelled under. Every comparison is
one request of :func:`rlaif.pipeline.judge.label_pairs` (the labeller's prompt layout and
option log-probabilities) with the constitution pinned to the item's principle, scored in a
given order. Write l(x, y) = logit P(option A) when x is shown as A and y as B, and
L(x, y) = (l(x, y) - l(y, x)) / 2, the log-odds that x beats y with the slot cancelled.

Each probe gives one paired difference per item (in log-odds; the same in probability):

========== ==================== ================================================================
probe      expected             paired difference d
========== ==================== ================================================================
swap       0                    l(a, b) + l(b, a): an answer's log-odds shown first minus shown second
pad        0                    L(pad z, w) - L(z, w): z (picked by a seeded coin) with a neutral sentence
markdown   0                    L(markdown z, w) - L(plain z, w): the same sentences, formatted or not
cut        below 0              L(cut x, y) - L(x, y): x the better answer without its last sentence
self       0 (> 0: prefers      L(z by model 1, z by model 2): z paraphrased by each of two policy models
           model 1's wording)
========== ==================== ================================================================

On test cases x is the case's better answer. On a run there is no reference, so x is the
answer the judge prefers in the order (a, b), and the cut is measured in the other order only,
(b, a): x's selection and its measurement then share no request, so a judge's noise cannot
make the cut look like a drop (regression to the mean). The pair's own orientation is a coin,
not the run's chosen/rejected, for the same reason.

Per principle and overall, each probe is summarised by the mean of d with Student's t interval
(:func:`rlaif.pipeline.intervals.mean_interval`); overall, an item's d is first averaged over
the principles it was judged under, so that each pair counts once. A bias probe (and self) is
**flagged** when |mean| exceeds the threshold and its interval excludes 0; the cut probe is
flagged when its mean drop is smaller than the threshold. Fewer than :data:`MIN_ITEMS_TO_FLAG`
items are never flagged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import rlaif
from rlaif.constitution import Constitution, Principle
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig
from rlaif.pipeline import audit_probes as probes
from rlaif.pipeline.constitution_test import pinned
from rlaif.pipeline.diagnostics import log_odds
from rlaif.pipeline.intervals import mean_interval
from rlaif.pipeline.judge import LabelSettings, Pair, label_pairs
from rlaif.seeds import derive_seed

CARD_NAME = "judge_card.json"
DEFAULT_THRESHOLD = 0.5
"""Log-odds; near P = 0.5 a shift of 0.5 moves P by about 12 points."""
MIN_ITEMS_TO_FLAG = 5
"""Fewer items than this (a principle with a few pairs): the shift is reported, never flagged."""

PROBES: dict[str, dict[str, str]] = {
    "swap": {"kind": "bias", "expected": "0",
             "what": "an answer's log-odds when shown first minus when shown second (the slot's pull, twice)"},
    "pad": {"kind": "bias", "expected": "0",
            "what": f"one answer (a seeded coin picks which) with the neutral sentence \"{probes.PAD_SENTENCE}\" appended"},
    "markdown": {"kind": "bias", "expected": "0",
                 "what": "one answer as markdown (bold first sentence, bullets) minus the same sentences as plain text"},
    "cut": {"kind": "sensitivity", "expected": "< 0", "what": "the better answer without its last sentence"},
    "self": {"kind": "self-preference", "expected": "0",
             "what": "one answer paraphrased by model 1 against the same answer paraphrased by model 2 (> 0: the judge prefers model 1's wording)"},
}


@dataclass(frozen=True)
class AuditItem:
    """Two answers to one conversation, judged under one principle. ``better``: "a" or "b" for a
    test case, None on a run (then the judge's order-(a, b) verdict picks it)."""

    id: str
    pair_id: str
    principle: str
    prompt: tuple[dict, ...]
    a: str
    b: str
    better: str | None = None


Key = tuple[str, str, str, str]  # item id, principle, answer shown first, answer shown second


class Scores:
    """Ordered judge scores, requested in batches (one label_pairs call per principle)."""

    def __init__(self, engine: Engine, const: Constitution, principles: dict[str, Principle], settings: LabelSettings,
                 on_batch: Callable[[int], None] | None = None):
        self.engine, self.const, self.principles, self.on_batch = engine, const, principles, on_batch
        self.settings = dataclasses.replace(settings, ensemble=1, both_orders=False, length_control=False)
        self.p: dict[Key, float] = {}
        self.errors: dict[Key, str] = {}
        self.prompts: dict[str, tuple[dict, ...]] = {}

    def score(self, keys: Sequence[Key]) -> None:
        """Score every key not scored yet (a key repeated, e.g. plain(z) == z, is asked once)."""
        todo: dict[str, list[Key]] = {}
        for k in dict.fromkeys(keys):
            if k not in self.p and k not in self.errors:
                todo.setdefault(k[1], []).append(k)
        for pid, ks in todo.items():
            pairs = [Pair(f"{k[0]}:{i}", self.prompts[k[0]], k[2], k[3]) for i, k in enumerate(ks)]
            labels = label_pairs(self.engine, pinned(self.const, self.principles[pid]), pairs, self.settings, desc=f"audit {pid}")
            for k, lab in zip(ks, labels):
                if lab.error:
                    self.errors[k] = lab.error
                elif lab.slot_probs:  # identical answers get no model call and no score
                    self.p[k] = lab.slot_probs[pid][0]
            if self.on_batch:
                self.on_batch(len(ks))

    def l(self, item: AuditItem, first: str, second: str) -> float | None:
        p = self.p.get((item.id, item.principle, first, second))
        return None if p is None else log_odds(p)

    def prob(self, item: AuditItem, first: str, second: str) -> float | None:
        return self.p.get((item.id, item.principle, first, second))

    def both(self, item: AuditItem, x: str, y: str) -> tuple[float, float] | None:
        """(L(x, y), order-averaged P(x beats y)); None when either order is missing."""
        l1, l2 = self.l(item, x, y), self.l(item, y, x)
        if l1 is None or l2 is None:
            return None
        return 0.5 * (l1 - l2), 0.5 * (self.prob(item, x, y) + 1.0 - self.prob(item, y, x))


def _coin(item: AuditItem, seed: int) -> tuple[str, str]:
    """(z, w): the answer a probe changes, picked by a coin seeded by the item, and the other."""
    return (item.a, item.b) if derive_seed(seed, item.pair_id, "audit-side") % 2 == 0 else (item.b, item.a)


def probed_answers(items: Sequence[AuditItem], seed: int = 0) -> list[str]:
    """The answers the pad, markdown and self probes change (one per pair), for paraphrasing."""
    return list(dict.fromkeys(_coin(it, seed)[0] for it in items))


def _both_orders(item: AuditItem, x: str, y: str) -> list[Key]:
    return [(item.id, item.principle, x, y), (item.id, item.principle, y, x)]


def _diff(s: Scores, item: AuditItem, variant: tuple[str, str], base: tuple[str, str]) -> tuple[float, float] | None:
    v, b = s.both(item, *variant), s.both(item, *base)
    return None if v is None or b is None else (v[0] - b[0], v[1] - b[1])


def measure(engine: Engine, const: Constitution, items: Sequence[AuditItem], settings: LabelSettings, seed: int = 0,
            paraphrases: dict[str, tuple[str, str]] | None = None, on_batch: Callable[[int], None] | None = None,
            principles: Sequence[Principle] = ()) -> dict[str, Any]:
    """Every probe's paired differences: ``{"d": {probe: [(item, d_logodds, d_prob)]}, "requests", "failed", "skipped"}``.

    ``paraphrases`` maps an answer to (model 1's paraphrase, model 2's), for the self probe;
    ``principles``: principles the items name that the constitution does not select.
    """
    principles = {p.id: p for p in (*const.principles, *principles)}
    s = Scores(engine, const, principles, settings, on_batch)
    for it in items:
        s.prompts[it.id] = it.prompt
    first: list[Key] = []
    for it in items:
        z, w = _coin(it, seed)
        first += _both_orders(it, it.a, it.b) + _both_orders(it, probes.pad(z), w)
        first += _both_orders(it, probes.markdown(z), w) + _both_orders(it, probes.plain(z), w)
        if it.better is not None:
            x, y = (it.a, it.b) if it.better == "a" else (it.b, it.a)
            cut = probes.cut_last_sentence(x)
            if cut:
                first += _both_orders(it, cut, y)
        para = (paraphrases or {}).get(z)
        if para and para[0] != para[1]:
            first += _both_orders(it, para[0], para[1])
    s.score(first)
    second: list[Key] = []
    for it in items:  # on a run the better answer is the one the order-(a, b) request prefers
        p_ab = s.prob(it, it.a, it.b)
        if it.better is None and p_ab is not None and p_ab != 0.5:
            x = it.a if p_ab > 0.5 else it.b
            cut = probes.cut_last_sentence(x)
            if cut:
                second.append((it.id, it.principle, it.b, cut) if x == it.a else (it.id, it.principle, cut, it.a))
    s.score(second)

    d: dict[str, list[tuple[AuditItem, float, float]]] = {k: [] for k in PROBES}
    skipped = {k: 0 for k in PROBES}

    def add(probe: str, it: AuditItem, value: tuple[float, float] | None) -> None:
        if value is None:
            skipped[probe] += 1
        else:
            d[probe].append((it, *value))

    for it in items:
        z, w = _coin(it, seed)
        lab, lba = s.l(it, it.a, it.b), s.l(it, it.b, it.a)
        add("swap", it, None if lab is None or lba is None else (lab + lba, s.prob(it, it.a, it.b) + s.prob(it, it.b, it.a) - 1.0))
        add("pad", it, _diff(s, it, (probes.pad(z), w), (z, w)))
        add("markdown", it, _diff(s, it, (probes.markdown(z), w), (probes.plain(z), w)))
        add("cut", it, _cut(s, it))
        para = (paraphrases or {}).get(z)
        if paraphrases is not None:
            both = s.both(it, *para) if para and para[0] != para[1] else None
            add("self", it, None if both is None else (both[0], both[1] - 0.5))
    if paraphrases is None:
        d.pop("self")
        skipped.pop("self")
    return {"d": d, "requests": len(s.p) + len(s.errors), "failed": len(s.errors),
            "errors": sorted(set(s.errors.values()))[:5], "skipped": skipped}


def _cut(s: Scores, it: AuditItem) -> tuple[float, float] | None:
    if it.better is not None:
        x, y = (it.a, it.b) if it.better == "a" else (it.b, it.a)
        cut = probes.cut_last_sentence(x)
        return _diff(s, it, (cut, y), (x, y)) if cut else None
    p_ab = s.prob(it, it.a, it.b)
    if p_ab is None or p_ab == 0.5:
        return None
    # order (b, a) only: x's log-odds there is l(b, a) when x = b, and -l(b, a) when x = a
    if p_ab > 0.5:
        cut = probes.cut_last_sentence(it.a)
        v, base = (s.prob(it, it.b, cut), s.prob(it, it.b, it.a)) if cut else (None, None)
        return None if v is None or base is None else (log_odds(base) - log_odds(v), base - v)
    cut = probes.cut_last_sentence(it.b)
    v, base = (s.prob(it, cut, it.a), s.prob(it, it.b, it.a)) if cut else (None, None)
    return None if v is None or base is None else (log_odds(v) - log_odds(base), v - base)


def _stats(values: Sequence[tuple[float, float]], probe: str, level: float, threshold: float) -> dict[str, Any]:
    lo = mean_interval([v[0] for v in values], level)
    pr = mean_interval([v[1] for v in values], level)
    out = {**lo, "p_mean": pr["mean"], "p_lo": pr["lo"], "p_hi": pr["hi"], "flagged": False}
    if lo["n"] >= MIN_ITEMS_TO_FLAG:
        if PROBES[probe]["kind"] == "sensitivity":
            out["flagged"] = lo["mean"] > -threshold
        else:
            out["flagged"] = abs(lo["mean"]) > threshold and not (lo["lo"] <= 0.0 <= lo["hi"])
    return out


def summarise(measured: dict[str, Any], level: float = 0.95, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Per principle and overall, each probe's mean shift, interval and flag, and the flag lines."""
    overall, by_principle = {}, {}
    for probe, rows in measured["d"].items():
        per_pair: dict[str, list[tuple[float, float]]] = {}
        per_principle: dict[str, list[tuple[float, float]]] = {}
        for it, dl, dp in rows:
            per_pair.setdefault(it.pair_id, []).append((dl, dp))
            per_principle.setdefault(it.principle, []).append((dl, dp))
        pooled = [(sum(v[0] for v in vs) / len(vs), sum(v[1] for v in vs) / len(vs)) for vs in per_pair.values()]
        overall[probe] = _stats(pooled, probe, level, threshold)
        for pid, vs in sorted(per_principle.items()):
            by_principle.setdefault(pid, {})[probe] = _stats(vs, probe, level, threshold)
    flags = [flag_line(probe, st) for probe, st in overall.items() if st["flagged"]]
    flags += [flag_line(probe, st, pid) for pid, per in by_principle.items() for probe, st in per.items() if st["flagged"]]
    return {"overall": overall, "by_principle": by_principle, "flags": flags}


def flag_line(probe: str, st: dict[str, Any], principle: str | None = None) -> str:
    where = f"{principle}: " if principle else "overall: "
    shift = f"{st['mean']:+.2f} log-odds [{st['lo']:+.2f}, {st['hi']:+.2f}] over {st['n']}"
    if PROBES[probe]["kind"] == "sensitivity":
        return f"{where}{probe}: {shift}; the judge barely notices the better answer losing its last sentence"
    return f"{where}{probe}: {shift}; expected 0 ({PROBES[probe]['what']})"


def paraphrase(engine: Engine, texts: Sequence[str], seed: int = 0, max_tokens: int = 384) -> list[str | None]:
    """Each text rewritten by ``engine``'s model (greedy, seeded); None where it failed or came back empty."""
    reqs = [ChatRequest(({"role": "user", "content": probes.PARAPHRASE_PROMPT.format(answer=t)},),
                        derive_seed(seed, t, "paraphrase")) for t in texts]
    outs = engine.generate(reqs, SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=max_tokens), desc="paraphrase")
    return [o.text.strip() if o.ok and o.text.strip() else None for o in outs]


def judge_card(measured: dict[str, Any], summary: dict[str, Any], *, source: dict[str, Any], judge: dict[str, Any],
               const: Constitution, settings: LabelSettings, level: float, threshold: float,
               policy_models: Sequence[str] | None = None) -> dict[str, Any]:
    """The judge card: what was probed, with which judge, and what moved (``RUN/judge_card.json``)."""
    described = {k: dict(v) for k, v in PROBES.items() if k in measured["d"]}
    if "self" in described and policy_models:
        described["self"]["models"] = list(policy_models)
    return {
        "kind": "rlaif judge card", "rlaif_version": rlaif.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source, "judge": judge,
        "constitution": {"name": const.name, "path": const.path, "sha256": const.sha256},
        "label_settings": {"cot": settings.cot, "cot_clamp": list(settings.cot_clamp), "few_shot": settings.few_shot,
                           "seed": settings.seed},
        "unit": "log-odds (natural log) of the probed answer being preferred; p_* fields: the same in probability",
        "level": level, "threshold": threshold, "pad_sentence": probes.PAD_SENTENCE, "probes": described,
        "overall": summary["overall"], "by_principle": summary["by_principle"], "flags": summary["flags"],
        "counts": {"items": len({it.id for rows in measured["d"].values() for it, _, _ in rows}),
                   "requests": measured["requests"], "failed_requests": measured["failed"], "skipped": measured["skipped"],
                   "errors": measured["errors"]},
    }


def format_card(card: dict[str, Any]) -> str:
    """The overall table and the flags, for the terminal."""
    lines = [f"{'probe':<10}{'kind':<17}{'expected':>9}{'n':>6}{'shift (log-odds)':>18}   {int(card['level'] * 100)}% interval"
             f"{'P shift':>12}  flagged"]
    for probe, st in card["overall"].items():
        p = card["probes"][probe]
        if st["mean"] is None:
            lines.append(f"{probe:<10}{p['kind']:<17}{p['expected']:>9}{0:>6}  (nothing to measure)")
            continue
        ci = "n/a" if st["lo"] is None else f"[{st['lo']:+.2f}, {st['hi']:+.2f}]"
        lines.append(f"{probe:<10}{p['kind']:<17}{p['expected']:>9}{st['n']:>6}{st['mean']:>+18.2f}   {ci:<15}"
                     f"{st['p_mean']:>+9.3f}  {'FLAG' if st['flagged'] else ''}")
    if card["flags"]:
        lines.append(f"\n{len(card['flags'])} shift(s) past the threshold ({card['threshold']} log-odds):")
        lines += [f"  {f}" for f in card["flags"]]
    return "\n".join(lines)
