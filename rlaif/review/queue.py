"""The order pairs are offered in: a uniformly random stratum for the estimates, and the pairs a
rating would teach most for everything else.

**Two strata, fixed per pair.** Each pair draws u = hash(pair id) in [0, 1); the pairs with
u < :data:`RANDOM_SHARE` are the *random stratum*. Membership depends on the pair id only, never
on the pair's content or on what was rated, so the random stratum is a simple random sample of
the run's pairs, and so is any prefix of it taken in order of u. Every agreement estimate and
interval (the page's headline, the per-principle reliability, the report) uses the ratings of
random-stratum pairs only: the informative stream, which picks pairs *because* they look hard,
never serves a random-stratum pair, so its choices cannot bias those numbers. (Inverse-probability
weights would use every rating, but an adaptive queue's selection probabilities are not known in
closed form; a fixed random half is simple and exactly unbiased, at the price of half the
ratings. The calibration fit uses every rating: the queue selects on the features the fit
conditions on, which leaves that regression unbiased.)

**The queue** (``rlaif review``'s default order) alternates between the two streams for each
reviewer, taking from the one this reviewer has rated fewer pairs of:

- *random stream*: the random-stratum pairs in order of u (pairs fewer people rated first);
- *informative stream*: the other pairs, ordered by
  1. how many people rated the pair already (unrated pairs first);
  2. whether the AI's two orders disagreed (``order_agreement`` < 1: these first);
  3. a score: closeness of ``chosen_prob`` to 0.5 (1 - 2|P - 0.5|, in [0, 1]) + scarcity (the mean
     over the pair's principles and its category of 1 / (1 + ratings so far)) + 0.5 when the
     pair's length stratum (the AI's chosen response is the longer / the shorter one) has fewer
     ratings than the other.

``--order file`` keeps the old order: the file's order, next unrated pair.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable, Sequence

from rlaif.review.data import Pair, Review

RANDOM_SHARE = 0.5
"""Share of the pairs in the random stratum. Fixed: changing it would move pairs between strata
and let earlier informative choices into the estimates."""
ORDERS = ("queue", "file")


def stratum_draw(pair_id: str) -> float:
    """u in [0, 1) from a hash of the pair id: the pair's place in the random stratum."""
    digest = hashlib.sha256(f"rlaif-review-stratum\x00{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_random_stratum(pair_id: str) -> bool:
    return stratum_draw(pair_id) < RANDOM_SHARE


def length_stratum(pair: Pair) -> str:
    """"longer" when the AI's chosen response is the longer one (characters), "shorter", or "equal"."""
    a, b = len(pair.chosen), len(pair.rejected)
    return "longer" if a > b else "shorter" if a < b else "equal"


def orders_disagreed(pair: Pair) -> bool:
    return pair.order_agreement is not None and pair.order_agreement < 1.0


def closeness(pair: Pair) -> float:
    """1 - 2|chosen_prob - 0.5|: 1 for a coin flip (or a tie), 0 for a certain label or none."""
    if pair.tie:
        return 1.0
    if pair.chosen_prob is None:
        return 0.0
    return max(0.0, 1.0 - 2.0 * abs(pair.chosen_prob - 0.5))


class ReviewQueue:
    """Which pair a reviewer gets next. ``update`` takes every rating that counts (the ratings
    store's listener); the queue keeps who rated what and the counts the score needs."""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)
        self.index = {p.id: i for i, p in enumerate(self.pairs)}
        draws = [stratum_draw(p.id) for p in self.pairs]
        self.random = sorted((i for i, u in enumerate(draws) if u < RANDOM_SHARE), key=draws.__getitem__)
        self.informative = [i for i, u in enumerate(draws) if u >= RANDOM_SHARE]
        self.in_random = [u < RANDOM_SHARE for u in draws]
        self.strata = [length_stratum(p) for p in self.pairs]
        self.closeness = [closeness(p) for p in self.pairs]
        self.agreed = [not orders_disagreed(p) for p in self.pairs]
        # what the rest of the score depends on: pairs that share it share that part (computed once per offer)
        self.groups = [(p.principles, p.category, s) for p, s in zip(self.pairs, self.strata)]
        self.raters = [0] * len(self.pairs)
        self.rated: dict[tuple[str, int], str] = {}  # (reviewer, pair index) -> time of the rating that counts
        self.mine: dict[str, set[int]] = {}  # reviewer -> pair indices rated
        self.skipped: dict[str, set[int]] = {}  # reviewer -> pairs passed over unrated in this session
        self.by_reviewer: dict[str, list[int]] = {}  # reviewer -> [random, informative] pairs rated
        self.principles: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()
        self.lengths: Counter[str] = Counter()

    def update(self, review: Review) -> None:
        i = self.index.get(review.pair_id)
        if i is None:
            return
        known = (review.reviewer, i) in self.rated
        self.rated[(review.reviewer, i)] = review.time
        self.mine.setdefault(review.reviewer, set()).add(i)
        if known:
            return  # a changed rating of a pair this reviewer rated before: nothing new to count
        pair = self.pairs[i]
        self.raters[i] += 1
        self.by_reviewer.setdefault(review.reviewer, [0, 0])[0 if self.in_random[i] else 1] += 1
        self.principles.update(pair.principles)
        self.categories[pair.category] += 1
        self.lengths[self.strata[i]] += 1

    def _group_score(self, group: tuple[tuple[str, ...], str, str]) -> float:
        """Scarcity + length balance of pairs with these principles, category and length stratum."""
        principles, category, stratum = group
        counts = [self.principles[p] for p in principles] + [self.categories[category]]
        scarcity = sum(1.0 / (1 + n) for n in counts) / len(counts)
        balance = 0.0
        if stratum != "equal":
            other = "shorter" if stratum == "longer" else "longer"
            balance = 0.5 if self.lengths[stratum] < self.lengths[other] else 0.0
        return scarcity + balance

    def score(self, i: int) -> float:
        """The informative stream's score of pair ``i`` (higher first; see the module docstring)."""
        return self.closeness[i] + self._group_score(self.groups[i])

    def _first(self, reviewer: str, stream: Iterable[int], skip: set[int], informative: bool) -> int | None:
        best, best_key = None, None
        group_scores: dict[tuple, float] = {}
        done = skip | self.mine.get(reviewer, set())
        raters, agreed, close, groups = self.raters, self.agreed, self.closeness, self.groups
        for rank, i in enumerate(stream):
            if i in done:
                continue
            if informative:
                g = groups[i]
                if g not in group_scores:
                    group_scores[g] = self._group_score(g)
                key = (raters[i], agreed[i], -(close[i] + group_scores[g]))
            else:
                key = (raters[i], rank)
            if best_key is None or key < best_key:
                best, best_key = i, key
        return best

    def next(self, reviewer: str, skip: Iterable[int] = ()) -> int | None:
        """The index of the pair to offer ``reviewer`` next (never one it rated or in ``skip``);
        None when every pair is rated or skipped."""
        skip = set(skip)
        n_random, n_informative = self.by_reviewer.get(reviewer, (0, 0))
        order = [(self.informative, True), (self.random, False)]
        if n_random < n_informative:
            order.reverse()
        for stream, informative in order:
            i = self._first(reviewer, stream, skip, informative)
            if i is not None:
                return i
        return None

    def stream_of(self, i: int) -> str:
        return "random" if self.in_random[i] else "informative"

    def next_after(self, reviewer: str, after: int, order: str) -> int:
        """The pair to show after pair ``after`` (-1: at the start). Queue order: :meth:`next`,
        passing over ``after`` for the rest of the session when it was left unrated (offered again
        once every other pair is rated). File order: the next pair after ``after`` that this
        reviewer has not rated (the pair after ``after`` when every pair is rated)."""
        n = len(self.pairs)
        if order == "file":
            for k in range(1, n + 1):
                i = (after + k) % n
                if (reviewer, i) not in self.rated:
                    return i
            return (after + 1) % n
        skipped = self.skipped.setdefault(reviewer, set())
        if 0 <= after < n and (reviewer, after) not in self.rated:
            skipped.add(after)
        i = self.next(reviewer, skipped | {after})
        if i is None and skipped:
            skipped.clear()
            i = self.next(reviewer, {after})
        return i if i is not None else (after + 1) % n

    def previous(self, reviewer: str, before: int) -> int:
        """The pair this reviewer rated last before pair ``before`` (by the time of the ratings that
        count); the last pair it rated when ``before`` is unrated; ``before`` itself at the start."""
        mine = [i for _, i in sorted((t, i) for (who, i), t in self.rated.items() if who == reviewer)]
        if before in mine:
            k = mine.index(before)
            return mine[k - 1] if k > 0 else before
        return mine[-1] if mine else max(before, 0)
