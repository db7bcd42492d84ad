"""``rlaif constitution test``: judge every principle's test cases under that principle.

Each case (:class:`rlaif.constitution.cases.PrincipleCase`) is labelled by
:func:`rlaif.pipeline.judge.label_pairs`, the function ``rlaif label`` uses: the same prompt
layout, option log-probabilities, both orders, ``--few-shot`` and ``--cot``. The only change is
which principle is asked: instead of a weighted draw, the constitution is *pinned* to the
case's own principle (:func:`pinned`), so the request is exactly the one ``rlaif label`` sends
when it draws that principle.

Per case, with P1 = P(better | better shown first) and P2 = P(better | better shown second):

* P(better) = (P1 + P2) / 2, the order-averaged label; the case **passes** when it is > 0.5;
* the orders are **consistent** when both name the same response (the rule of
  :func:`rlaif.pipeline.diagnostics.order_consistency`);
* the case is **decided by position** when both orders favour the same *slot* (P1 > 0.5 > P2
  or P2 > 0.5 > P1): the slot outweighed the content;
* its **confidence** is max(P, 1 - P) of the order-averaged label.

A failed case is given a **cause**: ``position`` (decided by position), ``tie`` (exactly 0.5
with consistent orders), ``length`` (both orders preferred the worse answer, and it is the
longer one) or ``content`` (both orders preferred the worse answer, which is not longer).
"""

from __future__ import annotations

import dataclasses
import os
from statistics import NormalDist
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlaif.constitution import Constitution, Principle
from rlaif.constitution.cases import PrincipleCase, traps
from rlaif.engine.base import Engine
from rlaif.engine.failures import FAILED_EXIT
from rlaif.pipeline.diagnostics import judge_diagnostics, length_split_agreement, order_consistency, warning_line
from rlaif.stats_intervals import wilson
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel, label_pairs

TEST_FAILED_EXIT = 5
"""Exit status of ``rlaif constitution test`` when the total pass rate, or the pass rate of a
principle with at least :data:`MIN_CASES_TO_GATE` cases, is below ``--min-pass``."""
REQUESTS_FAILED_EXIT = FAILED_EXIT
"""Exit status when judge requests failed (the server went away, a request could not be
scored): the pass rates would be measured on fewer cases than asked for. The code of the
labelling commands' failed requests (:data:`rlaif.engine.failures.FAILED_EXIT`)."""
MIN_CASES_TO_GATE = 10
"""A principle with fewer cases counts only in the total: with 6 cases one flipped case moves
its pass rate by 17 points."""
DEFAULT_MIN_PASS = 0.8


def pinned(const: Constitution, principle: Principle) -> Constitution:
    """The constitution with every principle draw landing on ``principle``.

    Its principles, system prompt and comparison examples stay as they are (``--few-shot`` asks
    each example's own principle's question, as ``rlaif label`` does); only the sampling weight
    is moved, all of it onto ``principle`` (added when the constitution does not select it).
    """
    principles = const.principles if any(p.id == principle.id for p in const.principles) else (*const.principles, principle)
    weights = tuple(1.0 if p.id == principle.id else 0.0 for p in principles)
    return dataclasses.replace(const, principles=principles, weights=weights)


def case_settings(cot: bool = False, few_shot: bool = False, cot_clamp: tuple[float, float] = (0.4, 0.6), seed: int = 0) -> LabelSettings:
    """How cases are judged: one principle (the case's own), both orders, no tie band."""
    return LabelSettings(ensemble=1, both_orders=True, cot=cot, cot_clamp=cot_clamp, few_shot=few_shot, seed=seed)


@dataclass(frozen=True)
class CaseResult:
    case: PrincipleCase
    label: PairLabel

    @property
    def error(self) -> str | None:
        return self.label.error if self.label.error or self.label.slot_probs else "not judged (identical responses)"

    @property
    def slots(self) -> tuple[float, float]:
        """P(option A) with response a shown first, and with response b shown first."""
        return tuple(self.label.slot_probs[self.case.principle])  # type: ignore[return-value]

    @property
    def p_orders(self) -> tuple[float, float]:
        """(P(better | better shown first), P(better | better shown second))."""
        p_a_first, p_b_first = self.slots
        if self.case.better == "A":
            return p_a_first, 1.0 - p_b_first
        return p_b_first, 1.0 - p_a_first

    @property
    def p_better(self) -> float:
        return self.label.p_a if self.case.better == "A" else 1.0 - self.label.p_a

    @property
    def passed(self) -> bool:
        return self.error is None and self.p_better > 0.5

    @property
    def consistent(self) -> bool:
        return order_consistency([self.slots])[0] == 1.0

    @property
    def by_position(self) -> bool:
        p_a_first, p_b_first = self.slots
        return (p_a_first - 0.5) * (p_b_first - 0.5) > 0

    @property
    def confidence(self) -> float:
        return max(self.label.p_a, 1.0 - self.label.p_a)

    @property
    def cause(self) -> str | None:
        """Why a judged case failed (None when it passed or was not judged)."""
        if self.error is not None or self.passed:
            return None
        if self.by_position:
            return "position"
        if self.p_better == 0.5:
            return "tie"
        return "length" if len(self.case.worse_text) > len(self.case.better_text) else "content"

    def to_dict(self) -> dict[str, Any]:
        c = self.case
        where = os.path.relpath(c.path) if c.path and not os.path.relpath(c.path).startswith("..") else c.path
        out: dict[str, Any] = {"case": c.name, "principle": c.principle, "where": f"{where}:{c.line}", "better": c.better,
                               "traps": list(traps(c)), "note": c.note, "error": self.error}
        if self.error is None:
            p1, p2 = self.p_orders
            out.update(p_better=self.p_better, p_better_shown_first=p1, p_better_shown_second=p2, passed=self.passed,
                       consistent=self.consistent, by_position=self.by_position, confidence=self.confidence, cause=self.cause)
        return out


def judge_cases(engine: Engine, const: Constitution, principles: Sequence[Principle], settings: LabelSettings,
                on_principle: Callable[[Principle], None] | None = None) -> list[CaseResult]:
    """Judge every case of ``principles`` under its own principle; one engine call per principle."""
    results: list[CaseResult] = []
    for p in principles:
        if not p.tests:
            continue
        pairs = [Pair(c.name, c.prompt, c.response_a, c.response_b, c.better.lower()) for c in p.tests]
        labels = label_pairs(engine, pinned(const, p), pairs, settings, desc=f"test {p.id}")
        results += [CaseResult(c, lab) for c, lab in zip(p.tests, labels)]
        if on_principle is not None:
            on_principle(p)
    return results


def summary(results: Sequence[CaseResult], level: float = 0.95) -> dict[str, Any]:
    """Pass count and rate with the Wilson interval, order consistency, mean confidence, the
    share decided by position, and the failed cases with their causes."""
    judged = [r for r in results if r.error is None]
    n, k = len(judged), sum(r.passed for r in judged)
    ci = wilson(k, n, z=NormalDist().inv_cdf(0.5 + level / 2)) if n else None

    def share(hits) -> float | None:
        return sum(hits) / n if n else None

    # pass rates where the better answer is the longer and where it is the shorter one, and their
    # mean: a judge that follows length alone scores 50% on it whatever the mix of cases
    split = length_split_agreement((len(r.case.better_text), len(r.case.worse_text), r.passed) for r in judged)
    return {
        "cases": len(results), "judged": n, "errors": len(results) - n, "passed": k,
        "length_controlled_pass_rate": split["length_controlled"], "by_length": split,
        "pass_rate": k / n if n else None, "interval": list(ci) if ci else None,
        "order_consistency": share(r.consistent for r in judged),
        "decided_by_position": share(r.by_position for r in judged),
        "mean_confidence": share(r.confidence for r in judged),
        "mean_p_better": share(r.p_better for r in judged),
        "failed": [r.case.name for r in judged if not r.passed],
        "causes": {c: sum(r.cause == c for r in judged) for c in ("position", "length", "content", "tie") if any(r.cause == c for r in judged)},
    }


def report(results: Sequence[CaseResult], level: float = 0.95, min_pass: float = DEFAULT_MIN_PASS) -> dict[str, Any]:
    """The whole result: per principle, the total, every case, the judge's diagnostics and the gate."""
    by: dict[str, list[CaseResult]] = {}
    for r in results:
        by.setdefault(r.case.principle, []).append(r)
    per = {pid: summary(rs, level) for pid, rs in by.items()}
    total = summary(results, level)
    reasons = []
    if total["pass_rate"] is not None and total["pass_rate"] < min_pass:
        reasons.append(f"total pass rate {total['pass_rate']:.1%} < --min-pass {min_pass:.0%}")
    for pid, s in per.items():
        if s["judged"] >= MIN_CASES_TO_GATE and s["pass_rate"] < min_pass:
            reasons.append(f"{pid}: pass rate {s['pass_rate']:.1%} of {s['judged']} cases < --min-pass {min_pass:.0%}")
    judged = [r for r in results if r.error is None]
    pairs = [Pair(r.case.name, r.case.prompt, r.case.response_a, r.case.response_b) for r in judged]
    diag = judge_diagnostics(pairs, [r.label for r in judged])
    return {"level": level, "min_pass": min_pass, "min_cases_to_gate": MIN_CASES_TO_GATE, "principles": per,
            "total": total, "diagnostics": diag, "judge_warning": warning_line(diag), "gate": reasons,
            "cases": [r.to_dict() for r in results]}


def exit_status(rep: dict[str, Any], strict: bool = False) -> int:
    """Failed requests first (4), then a pass rate under --min-pass (5), then --strict on an
    uninformative judge (3), else 0."""
    from rlaif.pipeline.diagnostics import STRICT_EXIT

    if rep["total"]["errors"]:
        return REQUESTS_FAILED_EXIT
    if rep["gate"]:
        return TEST_FAILED_EXIT
    if strict and rep["judge_warning"]:
        return STRICT_EXIT
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _row(name: str, s: dict[str, Any]) -> str:
    ci = s["interval"]
    interval = f"{ci[0]:>4.0%} - {ci[1]:<4.0%}" if ci else "n/a"
    conf = "n/a" if s["mean_confidence"] is None else f"{s['mean_confidence']:.2f}"
    return (f"{name:<28}{s['cases']:>6}{s['passed']:>5}/{s['judged']:<4}{_pct(s['pass_rate']):>5}   {interval:<13}"
            f"{_pct(s['order_consistency']):>11}{conf:>12}{_pct(s['decided_by_position']):>13}")


CAUSES = {
    "position": "the two orders favoured the same slot",
    "length": "both orders preferred the worse, longer answer",
    "content": "both orders preferred the worse answer",
    "tie": "exactly 0.5 in both orders",
}


def format_report(rep: dict[str, Any], max_failed: int = 40) -> str:
    """The table (one row per principle and the total) and the failed cases with their causes."""
    level = f"{rep['level']:.0%}"
    lines = [f"{'principle':<28}{'cases':>6}{'passed':>10}{'rate':>5}   {level + ' interval':<13}{'consistent':>11}"
             f"{'confidence':>12}{'by position':>13}"]
    lines += [_row(pid, s) for pid, s in rep["principles"].items()]
    lines.append(_row("total", rep["total"]))
    bl, lc = rep["total"]["by_length"], rep["total"]["length_controlled_pass_rate"]
    strata = "; ".join(f"{name}: {bl[key]['agreement']:.0%} of {bl[key]['n']}" for key, name in
                       (("longer", "better answer longer"), ("shorter", "shorter"), ("equal", "equal")) if bl[key]["n"])
    lines.append(f"length-controlled pass rate {_pct(lc)} ({strata})")
    failed = [c for c in rep["cases"] if c["error"] is None and not c["passed"]]
    if failed:
        causes = ", ".join(f"{k} {v}" for k, v in rep["total"]["causes"].items())
        lines.append(f"\nfailed cases ({len(failed)}; causes: {causes}):")
        for c in failed[:max_failed]:
            built = f"  [built to catch {' and '.join(c['traps'])} bias]" if c["traps"] else ""
            lines.append(f"  {c['case']:<30} P(better) {c['p_better']:.2f} ({c['p_better_shown_first']:.2f} shown first, "
                         f"{c['p_better_shown_second']:.2f} second)  {c['cause']}: {CAUSES[c['cause']]}{built}  {c['where']}")
        if len(failed) > max_failed:
            lines.append(f"  ... and {len(failed) - max_failed} more (--json lists every case)")
    errors = [c for c in rep["cases"] if c["error"] is not None]
    for c in errors[:5]:
        lines.append(f"  {c['case']}: not judged: {c['error']}")
    return "\n".join(lines)
