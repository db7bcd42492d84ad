"""The live numbers of the review page, as pure functions of pairs and ratings.

Every rating that counts (the latest of each reviewer for each pair) is one observation:
the human prefers the chosen response when its chosen-oriented Likert is 5-8.

- **Agreement** of the label with the human: the share of observations where the human
  prefers the label's chosen response. Pairs the AI labelled a tie are left out (counted
  apart). Split by category, by principle and by whether the AI's two orders agreed
  (``order_agreement == 1``, as ``rlaif label``'s report). Per principle, a principle's own
  verdict is used where the row has ``label_principle_probs`` (P(chosen) under that
  principle > 0.5 means it picked the chosen one); rows without them (the revision mode's
  "the revision wins") count the pair's label under each of their principles.
- **Calibration** of ``chosen_prob``: observations binned by ``chosen_prob``, the mean
  ``chosen_prob`` of each bin next to the share of humans who preferred the chosen
  response; and the Brier score mean((chosen_prob - [human prefers chosen])^2).
- **Inter-reviewer agreement**: over pairs rated by two or more reviewers, every two
  reviewers of a pair are one comparison; the share of comparisons that prefer the same
  response, and the mean absolute difference of their Likert ratings.
- **The estimate** (``random``): the same agreement over the ratings of the random stratum only
  (:mod:`rlaif.review.queue`: pairs chosen by a hash of their id, never by the queue), overall,
  per length stratum (the AI's chosen response the longer or the shorter one) with their mean,
  the length-controlled agreement, and per principle. The ordering of the queue cannot bias
  these; :func:`progress` adds the 95% Wilson interval, the ratings still needed for a target
  width, and whether it is met.

:func:`compute_stats` counts everything in one pass (the plain version, pinned by hand-worked
numbers in the tests); :class:`LiveStats` keeps the same numbers up to date rating by rating
for the server, and is checked against :func:`compute_stats`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping

from rlaif.review.data import FLAGS, Pair, Review
from rlaif.review.queue import in_random_stratum, length_stratum
from rlaif.stats_intervals import planning_proportion, ratings_needed, wilson

CAL_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class _Cell:
    """Agreement counts of one row of a table: observations and how many agreed."""

    __slots__ = ("n", "agree")

    def __init__(self):
        self.n = 0
        self.agree = 0

    def add(self, agree: bool) -> None:
        self.n += 1
        self.agree += agree

    def out(self) -> dict[str, Any]:
        return {"n": self.n, "agree": self.agree, "rate": self.agree / self.n if self.n else None}


def _bin(p: float) -> int:
    """Index of the calibration bin of ``p``: [0.5, 0.6), ..., [0.9, 1.0] (clipped to that range)."""
    return min(max(bisect_right(CAL_EDGES, p) - 1, 0), len(CAL_EDGES) - 2)


def compute_stats(pairs_by_id: Mapping[str, Pair], reviews: Iterable[Review]) -> dict[str, Any]:
    """All numbers of the statistics panel (see the module docstring)."""
    reviews = [r for r in reviews if r.pair_id in pairs_by_id]
    overall, agreed, disagreed, unknown_order = _Cell(), _Cell(), _Cell(), _Cell()
    by_category: dict[str, _Cell] = defaultdict(_Cell)
    by_principle: dict[str, _Cell] = defaultdict(_Cell)
    by_reviewer: dict[str, _Cell] = defaultdict(_Cell)
    rnd: dict[tuple[str, str], _Cell] = defaultdict(_Cell)  # the random stratum: (table, row) -> counts
    ai_ties = 0
    cal = [{"lo": lo, "hi": hi, "n": 0, "prob_sum": 0.0, "human_chosen": 0} for lo, hi in zip(CAL_EDGES, CAL_EDGES[1:])]
    brier_sum, brier_n = 0.0, 0
    flags = {"chosen": dict.fromkeys(FLAGS, 0), "rejected": dict.fromkeys(FLAGS, 0)}
    per_pair: dict[str, list[Review]] = defaultdict(list)
    sources: dict[str, int] = defaultdict(int)

    for r in reviews:
        pair = pairs_by_id[r.pair_id]
        human = r.likert >= 5  # prefers the chosen response
        per_pair[r.pair_id].append(r)
        sources[pair.label_source] += 1
        for f in r.flags_chosen:
            flags["chosen"][f] += 1
        for f in r.flags_rejected:
            flags["rejected"][f] += 1
        if pair.chosen_prob is not None:
            b = cal[_bin(pair.chosen_prob)]
            b["n"] += 1
            b["prob_sum"] += pair.chosen_prob
            b["human_chosen"] += int(human)
            brier_sum += (pair.chosen_prob - float(human)) ** 2
            brier_n += 1
        if pair.tie:
            ai_ties += 1
            continue
        overall.add(human)
        by_category[pair.category].add(human)
        by_reviewer[r.reviewer].add(human)
        if pair.order_agreement is None:
            unknown_order.add(human)
        else:
            (agreed if pair.order_agreement == 1.0 else disagreed).add(human)
        random = in_random_stratum(pair.id)
        if random:
            rnd[("overall", "")].add(human)
            rnd[("length", length_stratum(pair))].add(human)
        probs = pair.principle_probs
        for i, principle in enumerate(pair.principles):
            p = probs[i] if probs else None
            if p is None:
                by_principle[principle].add(human)
            elif p != 0.5:
                by_principle[principle].add((p > 0.5) == human)
                if random:
                    rnd[("principle", principle)].add((p > 0.5) == human)

    bins = []
    for b in cal:
        n = b["n"]
        bins.append({"lo": b["lo"], "hi": b["hi"], "n": n,
                     "mean_prob": b["prob_sum"] / n if n else None,
                     "human_rate": b["human_chosen"] / n if n else None})

    comparisons = same = 0
    abs_diff = 0
    multi = 0
    for rs in per_pair.values():
        if len(rs) < 2:
            continue
        multi += 1
        for a, b in combinations(rs, 2):
            comparisons += 1
            same += int(a.prefers_chosen == b.prefers_chosen)
            abs_diff += abs(a.likert - b.likert)

    reviewers: dict[str, int] = defaultdict(int)
    for r in reviews:
        reviewers[r.reviewer] += 1
    return {
        "pairs": len(pairs_by_id),
        "reviewed_pairs": len(per_pair),
        "ratings": len(reviews),
        "reviewers": dict(sorted(reviewers.items())),
        "label_sources": dict(sorted(sources.items())),  # ratings by where the pair's label came from
        "agreement": {
            "overall": overall.out(),
            "orders_agreed": agreed.out(),
            "orders_disagreed": disagreed.out(),
            "orders_unknown": unknown_order.out(),
            "by_category": {k: c.out() for k, c in sorted(by_category.items())},
            "by_principle": {k: c.out() for k, c in sorted(by_principle.items())},
            "by_reviewer": {k: c.out() for k, c in sorted(by_reviewer.items())},
            "ai_ties": ai_ties,
        },
        "calibration": {"bins": bins, "n": brier_n, "brier": brier_sum / brier_n if brier_n else None},
        "inter_reviewer": {
            "pairs": multi,
            "comparisons": comparisons,
            "agreement": same / comparisons if comparisons else None,
            "mean_abs_likert_diff": abs_diff / comparisons if comparisons else None,
        },
        "flags": flags,
        "random": random_block(rnd),
    }


def random_block(cells: Mapping[tuple[str, str], _Cell]) -> dict[str, Any]:
    """The random stratum's numbers from its cells: overall, per length stratum with their mean
    (the length-controlled agreement, None until both strata have ratings), per principle."""
    empty = _Cell().out()
    length = {k: cells[("length", k)].out() if ("length", k) in cells else empty for k in ("longer", "shorter", "equal")}
    lo, sh = length["longer"]["rate"], length["shorter"]["rate"]
    return {
        "overall": cells[("overall", "")].out() if ("overall", "") in cells else empty,
        "by_length": length,
        "length_controlled": 0.5 * (lo + sh) if lo is not None and sh is not None else None,
        "by_principle": {row: {**c.out(), "interval": wilson(c.agree, c.n)}
                         for (table, row), c in sorted(cells.items()) if table == "principle" and c.n},
    }


def progress(random: Mapping[str, Any], target: float) -> dict[str, Any]:
    """The estimate of the page's headline: the random stratum's agreement with its 95% Wilson
    interval, the ratings it needs for an interval of +-``target``, and whether that is met.

    The ratings needed are planned at the value inside the current interval nearest 0.5
    (:func:`rlaif.stats_intervals.planning_proportion`): +-5 points at 0.5 needs 381 ratings.
    """
    o = random["overall"]
    lo, hi = wilson(o["agree"], o["n"])
    total = ratings_needed(planning_proportion(lo, hi), target)
    met = lo is not None and (hi - lo) / 2 <= target
    return {"n": o["n"], "rate": o["rate"], "lo": lo, "hi": hi, "target": target, "needed_total": total,
            "more": 0 if met else max(total - o["n"], 1), "met": met}


class LiveStats:
    """The same numbers as :func:`compute_stats`, kept up to date one rating at a time, so
    the page's panel costs no pass over all ratings however many there are.

    ``update(review)`` takes a rating that counts from now on; a rating replacing the same
    reviewer's earlier one for that pair first takes the earlier one's contributions back
    out (counts, sums, and its comparisons with the pair's other reviewers). Checked
    against :func:`compute_stats` on random rating streams in the tests.
    """

    def __init__(self, pairs_by_id: Mapping[str, Pair]):
        self.pairs = pairs_by_id
        self.latest: dict[tuple[str, str], Review] = {}
        self.cells: dict[tuple[str, str], _Cell] = defaultdict(_Cell)  # (table, row) -> counts
        self.ai_ties = 0
        nb = len(CAL_EDGES) - 1
        self.cal_n, self.cal_prob, self.cal_human = [0] * nb, [0.0] * nb, [0] * nb
        self.brier_sum, self.brier_n = 0.0, 0
        self.flags = {"chosen": dict.fromkeys(FLAGS, 0), "rejected": dict.fromkeys(FLAGS, 0)}
        self.reviewers: dict[str, int] = defaultdict(int)
        self.sources: dict[str, int] = defaultdict(int)
        self.by_pair: dict[str, dict[str, int]] = defaultdict(dict)  # pair -> reviewer -> likert
        self.multi = self.comparisons = self.same = self.abs_diff = 0
        self._plans: dict[str, tuple[list[_Cell], list[tuple[_Cell, bool]], int | None]] = {}

    def _plan(self, pair: Pair) -> tuple[list[_Cell], list[tuple[_Cell, bool]], int | None]:
        """The cells a rating of ``pair`` counts in: those that take the human's choice as it
        is (the label's verdict is "chosen"), those of principles with their own verdict, and
        the calibration bin; worked out once per pair."""
        plan = self._plans.get(pair.id)
        if plan is None:
            as_is: list[_Cell] = []
            voted: list[tuple[_Cell, bool]] = []
            if not pair.tie:
                order = "unknown" if pair.order_agreement is None else "agreed" if pair.order_agreement == 1.0 else "disagreed"
                as_is += [self.cells[("overall", "")], self.cells[("category", pair.category)], self.cells[("orders", order)]]
                random = in_random_stratum(pair.id)
                if random:
                    as_is += [self.cells[("random.overall", "")], self.cells[("random.length", length_stratum(pair))]]
                probs = pair.principle_probs
                for i, principle in enumerate(pair.principles):
                    p = probs[i] if probs else None
                    if p is None:
                        as_is.append(self.cells[("principle", principle)])
                    elif p != 0.5:
                        voted.append((self.cells[("principle", principle)], p > 0.5))
                        if random:
                            voted.append((self.cells[("random.principle", principle)], p > 0.5))
            plan = (as_is, voted, None if pair.chosen_prob is None else _bin(pair.chosen_prob))
            self._plans[pair.id] = plan
        return plan

    def _count(self, r: Review, sign: int) -> None:
        pair = self.pairs[r.pair_id]
        as_is, voted, b = self._plan(pair)
        human = r.likert >= 5
        self.reviewers[r.reviewer] += sign
        self.sources[pair.label_source] += sign
        for f in r.flags_chosen:
            self.flags["chosen"][f] += sign
        for f in r.flags_rejected:
            self.flags["rejected"][f] += sign
        if b is not None:
            self.cal_n[b] += sign
            self.cal_prob[b] += sign * pair.chosen_prob
            self.cal_human[b] += sign * human
            self.brier_sum += sign * (pair.chosen_prob - float(human)) ** 2
            self.brier_n += sign
        if pair.tie:
            self.ai_ties += sign
            return
        agree = sign * human
        for c in as_is:
            c.n += sign
            c.agree += agree
        c = self.cells[("reviewer", r.reviewer)]
        c.n += sign
        c.agree += agree
        for c, vote in voted:
            c.n += sign
            c.agree += sign * (vote == human)

    def _compare(self, a: int, b: int, sign: int) -> None:
        self.comparisons += sign
        self.same += sign * ((a >= 5) == (b >= 5))
        self.abs_diff += sign * abs(a - b)

    def update(self, r: Review) -> None:
        if r.pair_id not in self.pairs:
            return
        key = (r.reviewer, r.pair_id)
        old = self.latest.get(key)
        if old is not None:
            self._count(old, -1)
        self._count(r, +1)
        self.latest[key] = r
        others = self.by_pair[r.pair_id]
        if old is None and len(others) == 1:
            self.multi += 1  # the pair's second reviewer
        for who, likert in others.items():
            if who != r.reviewer:
                if old is not None:
                    self._compare(old.likert, likert, -1)
                self._compare(r.likert, likert, +1)
        others[r.reviewer] = r.likert

    def snapshot(self) -> dict[str, Any]:
        """The numbers now, in :func:`compute_stats`'s format."""
        tables: dict[str, dict[str, dict]] = defaultdict(dict)
        for (table, row), c in sorted(self.cells.items()):
            if c.n:
                tables[table][row] = c.out()
        empty = _Cell().out()
        bins = [{"lo": lo, "hi": hi, "n": n, "mean_prob": ps / n if n else None, "human_rate": h / n if n else None}
                for lo, hi, n, ps, h in zip(CAL_EDGES, CAL_EDGES[1:], self.cal_n, self.cal_prob, self.cal_human)]
        c = self.comparisons
        return {
            "pairs": len(self.pairs),
            "reviewed_pairs": len(self.by_pair),
            "ratings": len(self.latest),
            "reviewers": {k: v for k, v in sorted(self.reviewers.items()) if v},
            "label_sources": {k: v for k, v in sorted(self.sources.items()) if v},
            "agreement": {
                "overall": tables["overall"].get("", empty),
                "orders_agreed": tables["orders"].get("agreed", empty),
                "orders_disagreed": tables["orders"].get("disagreed", empty),
                "orders_unknown": tables["orders"].get("unknown", empty),
                "by_category": tables["category"],
                "by_principle": tables["principle"],
                "by_reviewer": tables["reviewer"],
                "ai_ties": self.ai_ties,
            },
            "calibration": {"bins": bins, "n": self.brier_n, "brier": self.brier_sum / self.brier_n if self.brier_n else None},
            "inter_reviewer": {
                "pairs": self.multi,
                "comparisons": c,
                "agreement": self.same / c if c else None,
                "mean_abs_likert_diff": self.abs_diff / c if c else None,
            },
            "flags": {side: dict(counts) for side, counts in self.flags.items()},
            "random": random_block({(t.removeprefix("random."), row): c for (t, row), c in self.cells.items() if t.startswith("random.")}),
        }
