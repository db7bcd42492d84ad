"""What a labelled run says about its judge: position, order, length and ties.

Every labelled run (``rlaif generate --label``, ``rlaif label``) computes these over its
pairs and stores them in ``manifest.json``; the command prints them, and one warning line
when the judge looks uninformative. The functions are pure: numbers in, numbers out.

* **Order consistency**: the share of pair-principle comparisons (scored in both orders)
  whose two orders name the same winner. A judge that reads the content keeps its verdict
  when the responses swap places; one that picks a slot does not (0%: the slot decides).
* **Position bias**: the mean P(first slot) over every comparison scored. 0.5 is unbiased.
* **Length bias**: the Pearson correlation, over pairs, of the label's log-odds
  ``logit P(a)`` with the length difference of the two responses, measured as the log
  ratio of their character lengths, ``log((1 + len a) / (1 + len b))`` (scale-free, so
  close to the same number in tokens); and the share of pairs with a winner whose longer
  response won. On pairs where quality does not follow length, both should be near 0 and 50%.
* **Tie rate**: the share of judged pairs that are ties (no chosen side).

Identical pairs (never shown to the judge) and failed pairs are left out of all of them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

MIN_ORDER_CONSISTENCY = 0.5
"""Below this share the position decides more verdicts than the content does."""
MAX_LENGTH_CORRELATION = 0.3
"""Above this |r| the label follows the length difference more than a judge should on
pairs whose quality does not follow length."""
MIN_PAIRS_ORDER = 10
"""Fewer judged pairs than this: no warning about order consistency (too few to tell)."""
MIN_PAIRS_LENGTH = 20
"""Fewer judged pairs than this: no warning about length (a correlation of 20 points is noise)."""

_EPS = 1e-6


def log_odds(p: float) -> float:
    """logit(p), with p kept inside [1e-6, 1 - 1e-6] so that a certain judge stays finite."""
    p = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def length_feature(a: str, b: str) -> float:
    """Length difference of response a over b: log((1 + chars of a) / (1 + chars of b))."""
    return math.log((1 + len(a)) / (1 + len(b)))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None with fewer than 3 points or when either side does not vary."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"pearson needs equal lengths, got {n} and {len(ys)}")
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 1e-12 * n or syy <= 1e-12 * n:
        return None
    return sxy / math.sqrt(sxx * syy)


def order_consistency(slot_probs: Iterable[Sequence[float]]) -> tuple[float | None, int]:
    """Share of comparisons whose two orders agree, and how many comparisons had two orders.

    Each item is ``(P(A) with x shown as A, P(A) with y shown as A)``; the orders agree when
    ``P(A) >= 0.5`` in the first and ``1 - P(A) >= 0.5`` in the second name the same winner
    (the rule of :func:`rlaif.pipeline.judge.unswap`). Single-order items are skipped.
    """
    both = [s for s in slot_probs if len(s) == 2]
    if not both:
        return None, 0
    agree = sum((p1 >= 0.5) == (1.0 - p2 >= 0.5) for p1, p2 in both)
    return agree / len(both), len(both)


def position_bias(slot_probs: Iterable[Sequence[float]]) -> float | None:
    """Mean P(first slot) over every scored order of every comparison."""
    values = [p for s in slot_probs for p in s]
    return sum(values) / len(values) if values else None


def longer_chosen_rate(items: Iterable[tuple[str | None, int, int]]) -> tuple[float | None, int]:
    """Share of pairs with a winner and responses of different lengths whose longer one won.

    Items are ``(chosen 'a' / 'b' / None for a tie, chars of a, chars of b)``.
    """
    decided = [(c, la, lb) for c, la, lb in items if c is not None and la != lb]
    if not decided:
        return None, 0
    longer = sum((c == "a") == (la > lb) for c, la, lb in decided)
    return longer / len(decided), len(decided)


def length_split_agreement(records: Iterable[tuple[int, int, bool]]) -> dict[str, Any]:
    """Agreement with reference labels split by whether the better answer is the longer one.

    Each record is ``(chars of the reference-better answer, chars of the other, agreed)``.
    ``length_controlled`` is the mean of the two strata's agreements (None unless both have
    pairs): a judge that follows length alone scores 50% on it whatever the set's mix, where
    plain agreement would reward it for a set whose better answers are mostly longer.
    """
    strata: dict[str, list[bool]] = {"longer": [], "shorter": [], "equal": []}
    for better, other, hit in records:
        strata["longer" if better > other else "shorter" if better < other else "equal"].append(bool(hit))
    out: dict[str, Any] = {k: {"n": len(v), "agreement": (sum(v) / len(v)) if v else None} for k, v in strata.items()}
    lo, sh = out["longer"]["agreement"], out["shorter"]["agreement"]
    out["length_controlled"] = 0.5 * (lo + sh) if lo is not None and sh is not None else None
    return out


def _judged(pairs: Sequence[Any], labels: Sequence[Any]) -> list[tuple[Any, Any]]:
    return [(p, l) for p, l in zip(pairs, labels) if l.error is None and "identical" not in l.flags]


def label_length_bias(pairs: Sequence[Any], labels: Sequence[Any]) -> dict[str, Any]:
    """Length correlation, longer-chosen share and ties of labels as given (judge or final)."""
    judged = _judged(pairs, labels)
    xs = [length_feature(p.response_a, p.response_b) for p, _ in judged]
    ys = [log_odds(l.p_a) for _, l in judged]
    longer, n_longer = longer_chosen_rate((l.chosen, len(p.response_a), len(p.response_b)) for p, l in judged)
    ties = sum(l.chosen is None for _, l in judged)
    return {"length_correlation": pearson(xs, ys), "longer_chosen_rate": longer, "longer_chosen_n": n_longer,
            "ties": ties, "tie_rate": ties / len(judged) if judged else None}


def judge_diagnostics(pairs: Sequence[Any], labels: Sequence[Any]) -> dict[str, Any]:
    """The diagnostics of one run from its pairs (``response_a``, ``response_b``) and the
    judge's labels (:class:`rlaif.pipeline.judge.PairLabel`: ``p_a``, ``slot_probs``, ``flags``,
    ``error``, ``chosen``), before any length control.
    """
    judged = _judged(pairs, labels)
    slots = [s for _, l in judged for s in l.slot_probs.values()]
    consistency, n_both = order_consistency(slots)
    return {
        "pairs": len(judged),
        "comparisons": len(slots),
        "comparisons_both_orders": n_both,
        "order_consistency": consistency,
        "position_bias": position_bias(slots),
        **label_length_bias(pairs, labels),
    }


def judge_problems(diag: dict[str, Any], length_controlled: bool = False) -> list[str]:
    """Why the judge looks uninformative (empty when it does not). With ``length_controlled``
    the length preference has been removed from the labels, so it is not a problem of theirs."""
    problems = []
    c = diag.get("order_consistency")
    if c is not None and diag.get("pairs", 0) >= MIN_PAIRS_ORDER and c < MIN_ORDER_CONSISTENCY:
        problems.append(f"its two orders agree on only {c:.0%} of {diag['comparisons_both_orders']} comparisons "
                        f"(the slot decides more often than the content; want >= {MIN_ORDER_CONSISTENCY:.0%})")
    r = diag.get("length_correlation")
    if (not length_controlled and r is not None and diag.get("pairs", 0) >= MIN_PAIRS_LENGTH
            and abs(r) > MAX_LENGTH_CORRELATION):
        side = "longer" if r > 0 else "shorter"
        problems.append(f"its log-odds follow the length difference (r = {r:+.2f}, |r| > {MAX_LENGTH_CORRELATION}: "
                        f"it leans to the {side} response)")
    return problems


def warning_line(diag: dict[str, Any], length_controlled: bool = False) -> str | None:
    """One line for the user when the judge looks uninformative, with what to do about it."""
    problems = judge_problems(diag, length_controlled)
    if not problems:
        return None
    what = " and ".join(w for w, hit in (("position", "orders" in " ".join(problems)), ("length", "length" in " ".join(problems))) if hit)
    todo = "use a bigger --feedback-model"
    if "length" in what:
        todo += ", or add --length-control to remove the length preference from the labels"
    return f"warning: the feedback model looks uninformative: {'; '.join(problems)}. Its labels encode {what} more than quality: {todo}."


def format_diagnostics(diag: dict[str, Any], length_control: dict[str, Any] | None = None) -> list[str]:
    """Summary-table lines (label column 16 wide, like ``rlaif generate``'s table)."""

    def pct(x):
        return "n/a" if x is None else f"{x:.0%}"

    c = diag.get("order_consistency")
    orders = (f"orders agree {pct(c)} of {diag['comparisons_both_orders']} comparisons" if c is not None
              else "one order only")
    pos = diag.get("position_bias")
    r = diag.get("length_correlation")
    lines = [
        f"judge           {orders}   P(first slot) {'n/a' if pos is None else f'{pos:.2f}'}   "
        f"ties {diag['ties']} ({pct(diag.get('tie_rate'))})",
        f"length bias     r(log-odds, length) {'n/a' if r is None else f'{r:+.2f}'}   "
        f"longer chosen {pct(diag.get('longer_chosen_rate'))} of {diag['longer_chosen_n']}",
    ]
    if length_control:
        if length_control.get("applied"):
            after = length_control.get("after", {})
            ra = after.get("length_correlation")
            lines.append(
                f"length control  {length_control_estimate(length_control)} log-odds per log length ratio removed "
                f"({length_control['n']} pairs)   after: r {'n/a' if ra is None else f'{ra:+.2f}'}   "
                f"longer chosen {pct(after.get('longer_chosen_rate'))}")
        else:
            lines.append(f"length control  not applied: {length_control.get('reason')}")
    return lines


def length_control_estimate(lc: dict[str, Any]) -> str:
    """"+1.52 +- 0.08 (z +19.0)": the fitted length coefficient, its standard error and z."""
    se, z = lc.get("stderr"), lc.get("z")
    if se is None:  # a run finalised by an older rlaif
        return f"{lc['coef']:+.2f}"
    return f"{lc['coef']:+.2f} +- {se:.2f} (z {'inf, an exact fit' if z is None else f'{z:+.1f}'})"


STRICT_EXIT = 3
"""Exit status of ``--strict`` when a warning below is raised (the outputs are written anyway)."""


def run_warnings(manifest: dict[str, Any]) -> list[str]:
    """The warnings of a finished labelled run: an uninformative judge, and length control
    that was asked for but could not be fitted. One line each. (Length control that was fitted
    and not applied because the judge's length coefficient is not distinguishable from zero
    warns of nothing: its summary line says so, with the z.)"""
    diag = manifest.get("diagnostics")
    if not diag:
        return []
    lc = manifest.get("length_control")
    out = []
    line = warning_line(diag, length_controlled=bool(lc and lc.get("applied")))
    if line:
        out.append(line)
    if lc and not lc.get("applied") and lc.get("z") is None:
        # not fitted (too few pairs, no length spread); a fit whose coefficient is not
        # distinguishable from zero is no problem: the judge showed no length preference to remove
        out.append(f"warning: --length-control was not applied ({lc.get('reason')}); the labels are the judge's own.")
    if lc and lc.get("applied") and lc.get("caution"):
        out.append(f"warning: --length-control: {lc['caution']}; prefer pairs without that structure, or leave it off.")
    return out


def _percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending list."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def text_length_counter(model: str | None) -> tuple[Callable[[str], int], str]:
    """Count tokens with *model*'s tokenizer when it is a local model folder, else words.

    Returns ``(count, unit)``; the unit ("tokens" or "words") is reported with the numbers.
    """
    if model:
        from pathlib import Path

        path = Path(model)
        if path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(path))
                return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokens"
            except Exception:  # noqa: BLE001 - a tokenizer that will not load: fall back to words
                pass
    return (lambda text: len(text.split())), "words"


def preference_lengths(rows: Iterable[dict[str, Any]], count: Callable[[str], int], unit: str) -> dict[str, Any]:
    """How long the chosen and rejected answers of a preference dataset are.

    A dataset whose chosen answers are mostly the longer ones teaches a policy that length
    pays (Singhal et al. 2023). Rows are TRL conversational rows: the last message of
    ``chosen`` / ``rejected`` is the answer. Ties (rows flagged "tie") name no winner and are
    left out. ``diff_pXX`` are percentiles of ``len(chosen) - len(rejected)``.
    """
    diffs, lc, lr = [], [], []
    for row in rows:
        if "tie" in (row.get("flags") or ()):
            continue
        c = count(_answer(row["chosen"]))
        r = count(_answer(row["rejected"]))
        lc.append(c)
        lr.append(r)
        diffs.append(c - r)
    n = len(diffs)
    if not n:
        return {"unit": unit, "pairs": 0}
    d = sorted(diffs)
    return {
        "unit": unit,
        "pairs": n,
        "chosen_mean": sum(lc) / n,
        "rejected_mean": sum(lr) / n,
        "chosen_longer": sum(x > 0 for x in diffs) / n,
        "equal": sum(x == 0 for x in diffs) / n,
        "diff_p10": _percentile(d, 0.1),
        "diff_p50": _percentile(d, 0.5),
        "diff_p90": _percentile(d, 0.9),
    }


def _answer(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return str(messages[-1]["content"]) if messages else ""


def format_preference_lengths(s: dict[str, Any]) -> str:
    """One summary line: mean lengths, the share where chosen is longer, the spread of the difference."""
    if not s.get("pairs"):
        return "lengths         no preference pairs"
    return (f"lengths         chosen {s['chosen_mean']:.1f} vs rejected {s['rejected_mean']:.1f} {s['unit']} (mean); "
            f"chosen longer in {100 * s['chosen_longer']:.0f}% of {s['pairs']} pairs, equal {100 * s['equal']:.0f}%; "
            f"difference p10/p50/p90 {s['diff_p10']:+.0f}/{s['diff_p50']:+.0f}/{s['diff_p90']:+.0f}")
