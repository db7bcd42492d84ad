"""A run's human ratings as ``rlaif calibrate`` and ``rlaif export`` read them, and what they say
about each principle.

- :func:`read_rated_run`: the run's preference rows (as written), the review page's view of each
  (:class:`rlaif.review.data.Pair`), and the ratings that count from one or more
  ``reviews.jsonl`` files (``RUN/reviews.jsonl`` by default). Across files a submission is
  counted once, and of a reviewer's ratings of a pair the latest (by time) counts, as on the page.
- :func:`soft_label`: a Likert rating (1 = rejected much better ... 8 = chosen much better) as
  P(chosen is better) = (likert - 0.5) / 8, the middle of the probability band that the AI's own
  Likert scale (``likert(p) = 1 + floor(8 p)``) maps to that rating: 8 -> 0.9375, 5 -> 0.5625,
  4 -> 0.4375, 1 -> 0.0625. The hard verdict is the side of 0.5, the page's "prefers chosen"
  (likert >= 5).
- :func:`principle_reliability`: each principle's agreement with people, from the ratings of the
  random stratum (:mod:`rlaif.review.queue`) only, with the 95% Wilson interval. An observation is
  one rating of a pair whose row holds that principle's own probability: the principle agreed
  when its P(chosen) and the rating fall on the same side of 0.5 (a principle at exactly 0.5 is
  left out). A principle is *flagged* when the interval's upper end lies below the threshold
  (the data say, at 95%, that it agrees with people less often than that); a flagged principle
  gets ``flagged_weight`` (default 0: left out of the ensemble average), the others weight 1.
  ``rlaif label --principle-reliability FILE`` uses the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlaif.data import textio
from rlaif.review.data import Pair, Review, ReviewError, ReviewStore, pair_from_row
from rlaif.review.queue import in_random_stratum
from rlaif.stats_intervals import wilson

DEFAULT_THRESHOLD = 0.6
RELIABILITY_KIND = "rlaif-principle-reliability"


class RatingsError(ValueError):
    """A run or ratings file that cannot be used (printed as one line, exit status 2)."""


@dataclass
class RatedRun:
    """A run folder's preference rows and the ratings that count."""

    path: Path
    rows: list[dict[str, Any]]
    pairs: list[Pair]
    reviews: list[Review]
    manifest: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def by_id(self) -> dict[str, Pair]:
        return {p.id: p for p in self.pairs}

    def reviews_by_pair(self) -> dict[str, list[Review]]:
        out: dict[str, list[Review]] = {}
        for r in self.reviews:
            out.setdefault(r.pair_id, []).append(r)
        return out


def read_rated_run(run: str | Path, review_files: Sequence[str | Path] | None = None) -> RatedRun:
    """The run's rows, pairs and ratings (:class:`RatingsError` says what is wrong)."""
    run = Path(run)
    prefs = run / "preferences.jsonl"
    if not prefs.is_file():
        raise RatingsError(f"{run} has no preferences.jsonl; give a run folder made by rlaif generate, label, calibrate or export")
    manifest_file = run / "manifest.json"
    manifest = textio.read_json(manifest_file, RatingsError) if manifest_file.is_file() else {}
    rows, pairs, seen = [], [], set()
    for lineno, line in textio.lines(textio.read_text(prefs, RatingsError)):
        try:
            row = json.loads(line)
            pair = pair_from_row(row, len(pairs), lineno)
        except ValueError as exc:
            raise RatingsError(f"{prefs}:{lineno}: not a preference row ({exc})") from None
        if pair.id in seen:
            raise RatingsError(f"{prefs}:{lineno}: pair id {pair.id!r} appears twice")
        seen.add(pair.id)
        rows.append(row)
        pairs.append(pair)
    files = [Path(f) for f in review_files] if review_files else [run / "reviews.jsonl"]
    by_id = {p.id: p for p in pairs}
    latest: dict[tuple[str, str], Review] = {}
    submissions: set[str] = set()
    skipped = 0
    for f in files:
        if not f.is_file():
            raise RatingsError(f"{f}: no such ratings file" + (" (rate the run with rlaif review first)" if not review_files else ""))
        try:
            store = ReviewStore(f, by_id)
        except (OSError, ReviewError) as exc:
            raise RatingsError(f"{f}: cannot read ({exc})") from None
        skipped += store.skipped
        for r in sorted(store.reviews(), key=lambda r: r.time):
            if r.submission_id in submissions:
                continue
            submissions.add(r.submission_id)
            key = (r.reviewer, r.pair_id)
            if key not in latest or latest[key].time <= r.time:
                latest[key] = r
    return RatedRun(run, rows, pairs, sorted(latest.values(), key=lambda r: (r.time, r.reviewer, r.pair_id)), manifest,
                    [str(f) for f in files], skipped)


def soft_label(likert: int) -> float:
    """P(chosen is better) from a rating in the chosen orientation (see the module docstring)."""
    if not 1 <= likert <= 8:
        raise ValueError(f"a Likert rating is 1-8, not {likert}")
    return (likert - 0.5) / 8


def principle_reliability(pairs_by_id: dict[str, Pair], reviews: Sequence[Review], threshold: float = DEFAULT_THRESHOLD,
                          flagged_weight: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per principle: ``n``, ``agree``, ``rate``, ``interval`` (95% Wilson), ``flagged`` and ``weight``
    (see the module docstring), from the random stratum's ratings."""
    counts: dict[str, list[int]] = {}
    for r in reviews:
        pair = pairs_by_id.get(r.pair_id)
        if pair is None or pair.tie or not pair.principle_probs or not in_random_stratum(pair.id):
            continue
        human = r.likert >= 5
        for principle, p in zip(pair.principles, pair.principle_probs):
            if p is None or p == 0.5:
                continue
            c = counts.setdefault(principle, [0, 0])
            c[0] += 1
            c[1] += int((p > 0.5) == human)
    out = {}
    for principle, (n, agree) in sorted(counts.items()):
        lo, hi = wilson(agree, n)
        flagged = hi < threshold
        out[principle] = {"n": n, "agree": agree, "rate": agree / n, "interval": [lo, hi], "flagged": flagged,
                          "weight": flagged_weight if flagged else 1.0}
    return out


def reliability_file(reliability: dict[str, dict[str, Any]], threshold: float, flagged_weight: float,
                     judge: str | None, constitution_sha256: str | None, source: str) -> dict[str, Any]:
    """The content of ``principle_reliability.json`` (read back by :func:`read_principle_weights`)."""
    return {
        "kind": RELIABILITY_KIND,
        "method": "agreement of each principle's own verdict with the human verdict over the random stratum's "
                  "ratings; flagged when the 95% Wilson interval lies below the threshold",
        "threshold": threshold,
        "flagged_weight": flagged_weight,
        "judge": judge,
        "constitution_sha256": constitution_sha256,
        "source": source,
        "principles": reliability,
        "weights": {k: v["weight"] for k, v in reliability.items()},
    }


def read_principle_weights(path: str | Path) -> dict[str, float]:
    """The ``weights`` of a principle-reliability file: principle id -> weight >= 0 (principles
    not listed keep weight 1). :class:`RatingsError` for a file that is not one."""
    data = textio.read_json(path, RatingsError)
    if not isinstance(data, dict) or data.get("kind") != RELIABILITY_KIND or not isinstance(data.get("weights"), dict):
        raise RatingsError(f"{path} is not a principle-reliability file (rlaif calibrate writes one: principle_reliability.json)")
    weights = {}
    for k, v in data["weights"].items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise RatingsError(f"{path}: the weight of {k!r} must be a number >= 0, not {v!r}")
        weights[str(k)] = float(v)
    return weights


def reweighted_label(lab: Any, weights: dict[str, float], tie_band: float) -> Any:
    """``rlaif label --principle-reliability``: the label's P(a) as the weighted mean of its
    principles' P(a) (weights from the file, 1 for principles it does not list), instead of the
    plain mean. The principles sampled are the same (sampling weights are untouched); when every
    principle of a pair has weight 0 the plain mean stays. Ties are decided again with ``tie_band``."""
    from dataclasses import replace

    from rlaif.pipeline.judge import likert, margin

    if lab.error is not None or "identical" in lab.flags or not lab.per_principle:
        return lab
    ws = {k: weights.get(k, 1.0) for k in lab.per_principle}
    total = sum(ws.values())
    if total <= 0 or all(w == 1.0 for w in ws.values()):
        return lab
    p = sum(ws[k] * v for k, v in lab.per_principle.items()) / total
    first = lab.first_order_p_a
    if all(k in lab.slot_probs for k in ws):  # the one-order label (position diagnostics) weighed the same way
        first = sum(ws[k] * lab.slot_probs[k][0] for k in ws) / total
    flags = {f for f in lab.flags if f != "tie"} | {"reweighted"}
    if abs(p - 0.5) <= tie_band:
        flags.add("tie")
    return replace(lab, p_a=p, first_order_p_a=first, likert=likert(p), margin=margin(p), flags=tuple(sorted(flags)))
