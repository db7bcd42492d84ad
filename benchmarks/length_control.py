"""The length model of ``--length-control`` against the alternatives, on simulated judges.

A judge whose comparisons have log-odds ``beta d + content`` (content independent of the length
feature d, as on a length-balanced pair set) is simulated many times; each estimator's length
coefficient is compared with the injected beta:

* rlaif's fit (rlaif/pipeline/length_control.py): maximum likelihood with logistic content,
  clustered standard error, applied at |z| >= 1.96;
* a logistic regression on the soft labels (the fractional logit: binary cross-entropy with the
  judge's P(a) as target), what length-controlled AlpacaEval fits to its win rates;
* least squares on the log-odds clipped at +-13.8 (rlaif's previous fit).

    python benchmarks/length_control.py [--reps 300] [--out benchmarks/results/length-control.md]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from rlaif.pipeline.diagnostics import log_odds
from rlaif.pipeline.length_control import Z_MIN, fit_length_model

CLIP = log_odds(1.0)  # the log-odds of P = 1 - 1e-6, where labels are clipped


def fractional_logit(p: np.ndarray, d: np.ndarray) -> float:
    """Slope of the logistic regression of the soft labels p on (1, d): Newton on the binary
    cross-entropy with soft targets (Papke and Wooldridge 1996)."""
    x = np.stack([np.ones_like(d), d], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(x @ theta)))
        step = np.linalg.solve((x * (q * (1 - q))[:, None]).T @ x, x.T @ (p - q))
        theta += step
        if np.abs(step).max() < 1e-12:
            break
    return float(theta[1])


def simulate(rng, n_pairs: int, k: int, beta: float, content, sure: float = 0.0):
    """Log-odds of k comparisons per pair: beta d + the pair's content (``content(rng, j)`` for
    principle j, the sign shared by the pair), clipped at +-CLIP; a share ``sure`` of the pairs
    are certain (P 0 or 1, whichever side the length is on)."""
    d = rng.normal(0.0, 0.5, n_pairs)
    ys, ds, cl = [], [], []
    for i in range(n_pairs):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        confident = rng.random() < sure
        for j in range(k):
            y = beta * d[i] + sign * content(rng, j) + (30.0 * sign if confident else 0.0)
            ys.append(float(np.clip(y, -CLIP, CLIP)))
            ds.append(d[i])
            cl.append(i)
    return np.array(ys), np.array(ds), cl


SCENARIOS = {
    "content N(0, 0.5) (a weak judge)": dict(content=lambda rng, j: rng.normal(0.0, 0.5)),
    "content N(0, 2)": dict(content=lambda rng, j: rng.normal(0.0, 2.0)),
    "content N(0, 6) (a confident judge; some at the clip)": dict(content=lambda rng, j: rng.normal(0.0, 6.0)),
    "content +-4 exactly (two values only)": dict(content=lambda rng, j: 4.0),
    "content +-0.5 / 1.5 / 3 by principle": dict(content=lambda rng, j: (0.5, 1.5, 3.0)[j % 3]),
    "content N(0, 1), 40% of pairs certain (P 0 or 1)": dict(content=lambda rng, j: rng.normal(0.0, 1.0), sure=0.4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/length-control.md")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    lines = ["# Length control: the fit against the alternatives", "",
             f"`python benchmarks/length_control.py --reps {args.reps} --pairs {args.pairs}`: {args.pairs} pairs of 3 comparisons "
             f"(principles) each, log-odds = beta d + content, d ~ N(0, 0.5), content independent of d; {args.reps} runs per row. "
             "Mean estimate (root mean squared error) of the length coefficient; for rlaif's fit also how often beta +- 1.96 se "
             "holds the truth and how often the correction is applied.", "",
             "| judge | beta | rlaif (ML, logistic content) | its interval holds beta | applied | logistic regression on soft labels | least squares on log-odds |",
             "|---|---|---|---|---|---|---|"]
    for name, sc in SCENARIOS.items():
        for beta in (1.5, 0.0):
            ours, cover, applied, frac, ls = [], 0, 0, [], []
            for _ in range(args.reps):
                y, d, cl = simulate(rng, args.pairs, 3, beta, sc["content"], sc.get("sure", 0.0))
                fit = fit_length_model(y.tolist(), d.tolist(), remove_intercept=False, clusters=cl)
                ours.append(fit.coef)
                cover += abs(fit.coef - beta) <= Z_MIN * fit.stderr
                applied += fit.applied
                frac.append(fractional_logit(1.0 / (1.0 + np.exp(-y)), d))
                ls.append(float(np.polyfit(d, y, 1)[0]))

            def cell(v):
                v = np.asarray(v)
                return f"{v.mean():+.2f} ({math.sqrt(np.mean((v - beta) ** 2)):.2f})"

            lines.append(f"| {name} | {beta} | {cell(ours)} | {cover / args.reps:.1%} | {applied / args.reps:.1%} | {cell(frac)} | {cell(ls)} |")
    lines += ["", "Read: the soft-label logistic regression estimates the length effect on the *average* label, which the "
              "content's spread flattens: the surer the judge is about content, the less of its length bias it finds (and the "
              "less a correction by it would remove). Least squares is unbiased until log-odds reach the clip, then the "
              "certain comparisons throw it about. rlaif's fit is close to least squares where nothing is clipped (a little "
              "less efficient on normal content, whose tails are lighter than the logistic's), is not thrown about by "
              "certain comparisons (it leaves them out; when many reach the clip through the length term itself, as with "
              "content N(0, 6), that leaves it somewhat low), holds beta in 92-95% of its intervals, and at beta = 0 is "
              "applied in 5-7% of runs (the z >= 1.96 gate; the clustered standard error is a little small at 100 pairs).", "",
              f"Total {time.perf_counter() - t0:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
