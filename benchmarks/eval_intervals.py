"""Coverage of the 95% intervals of ``rlaif eval`` (rlaif/pipeline/intervals.py), fuller than the tests.

Exact coverage (every outcome weighted by its probability) of the rate and win-rate intervals at
n = 5, 8, 20, 100, and of the betting interval of paired differences at n = 5, 8, 20; simulated
coverage of the bootstrap-t (rewards, KL) and of the percentile bootstrap it replaced, on normal,
skewed and heavy-tailed values; and the soft win rate's betting interval on continuous values.
Widths are printed next to coverage: an interval that covers by being [0, 1] is no use.

    python benchmarks/eval_intervals.py [--reps 2000] [--out benchmarks/results/eval-intervals.md]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from rlaif.pipeline.eval_stats import paired_difference, win_rate
from rlaif.pipeline.intervals import betting_interval, bootstrap_t, clopper_pearson


def binom_pmf(k, n, p):
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def tri_pmf(c, p):
    out = math.factorial(sum(c))
    for ci, pi in zip(c, p):
        if ci and pi == 0:
            return 0.0
        out *= pi**ci / math.factorial(ci)
    return out


def exact_rates(lines):
    lines += ["## Rates: Clopper-Pearson, exact coverage", "",
              "| n | p = 0.02 | p = 0.5 | p = 0.98 | Wilson at 0.02 (for contrast) | old percentile bootstrap at 0.02 |", "|---|---|---|---|---|---|"]
    z = 1.959963984540054
    for n in (5, 8, 20, 100):
        cis = [clopper_pearson(k, n) for k in range(n + 1)]
        cov = [math.fsum(binom_pmf(k, n, p) for k, c in enumerate(cis) if c["lo"] <= p <= c["hi"]) for p in (0.02, 0.5, 0.98)]
        wil = 0.0
        for k in range(n + 1):
            ph = k / n
            mid, half = (ph + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            wil += binom_pmf(k, n, 0.02) * (mid - half <= 0.02 <= mid + half)
        # the percentile bootstrap of 0/1 values: k = 0 gives [0, 0], which never holds 0.02
        boot = 1 - binom_pmf(0, n, 0.02) - binom_pmf(n, n, 0.02)
        lines.append(f"| {n} | {cov[0]:.4f} | {cov[1]:.4f} | {cov[2]:.4f} | {wil:.4f} | at most {boot:.4f} |")
    lines += ["", "Every Clopper-Pearson cell is at least 0.95. The percentile bootstrap's column is an upper bound: at k = 0 its interval is "
              "the point [0, 0]."]


GRID = [(a, b) for a in np.linspace(0, 1, 11) for b in np.linspace(0, 1, 11) if a + b <= 1 + 1e-9]


def exact_trinomial(lines, title, interval, truth, ns):
    lines += ["", f"## {title}", "", "| n | outcomes | grid points | worst exact coverage (at) | mean width at the worst point | seconds |",
              "|---|---|---|---|---|---|"]
    for n in ns:
        t0 = time.perf_counter()
        outs = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
        cis = {o: interval(o) for o in outs}
        worst = (2.0, None, None)
        for p1, p2 in GRID:
            p = (p1, p2, max(0.0, 1 - p1 - p2))
            mu = truth(p)
            probs = {o: tri_pmf(o, p) for o in outs}
            cov = math.fsum(pr for o, pr in probs.items() if cis[o]["lo"] - 1e-12 <= mu <= cis[o]["hi"] + 1e-12)
            if cov < worst[0]:
                width = math.fsum(pr * (cis[o]["hi"] - cis[o]["lo"]) for o, pr in probs.items())
                worst = (cov, p, width)
        lines.append(f"| {n} | {len(outs)} | {len(GRID)} | {worst[0]:.4f} (P = {tuple(round(float(x), 2) for x in worst[1])}) | "
                     f"{worst[2]:.3f} | {time.perf_counter() - t0:.1f} |")


def simulated(lines, reps, seed):
    rng = np.random.default_rng(seed)
    dists = {"normal": (lambda k: rng.normal(0, 1, k), 0.0), "exponential (skewed)": (lambda k: rng.exponential(1, k), 1.0),
             "lognormal (very skewed)": (lambda k: rng.lognormal(0, 1, k), math.exp(0.5)),
             "t, 3 df (heavy tails)": (lambda k: rng.standard_t(3, k), 0.0)}
    lines += ["", f"## Unbounded means (rewards, KL): simulated coverage, {reps} draws each, 1000 resamples", "",
              "| values | n | bootstrap-t | old percentile bootstrap | Student t (for contrast) |", "|---|---|---|---|---|"]
    tq = {5: 2.776, 8: 2.365, 20: 2.093, 100: 1.984}
    for name, (draw, mu) in dists.items():
        for n in (5, 8, 20, 100):
            bt = pc = st = 0
            for r in range(reps):
                x = draw(n)
                ci = bootstrap_t(x, seed=r, n_boot=1000)
                bt += ci["lo"] is not None and ci["hi"] is not None and ci["lo"] <= mu <= ci["hi"]
                lo, hi = np.quantile(x[rng.integers(0, n, (1000, n))].mean(axis=1), [0.025, 0.975])
                pc += lo <= mu <= hi
                half = tq[n] * x.std(ddof=1) / math.sqrt(n)
                st += abs(x.mean() - mu) <= half
            lines.append(f"| {name} | {n} | {bt / reps:.3f} | {pc / reps:.3f} | {st / reps:.3f} |")
    lines += ["", f"Monte Carlo error of each cell: about {math.sqrt(0.05 * 0.95 / reps):.3f}."]
    dists = {"beta(0.5, 0.5)": (lambda k: rng.beta(0.5, 0.5, k), 0.5), "near 1/2 (a weak judge)": (lambda k: np.clip(rng.normal(0.497, 0.01, k), 0, 1), 0.497),
             "beta(5, 1)": (lambda k: rng.beta(5, 1, k), 5 / 6), "two points 0.1 / 0.9, P(0.9) = 0.8": (lambda k: np.where(rng.random(k) < 0.8, 0.9, 0.1), 0.74)}
    lines += ["", f"## Soft win rate (values in [0, 1]): betting interval, simulated coverage, {reps // 4} draws each", "",
              "| values | n | coverage | mean width |", "|---|---|---|---|"]
    for name, (draw, mu) in dists.items():
        for n in (8, 30, 100):
            cov, width = 0, 0.0
            for r in range(reps // 4):
                ci = betting_interval(draw(n), seed=r)
                cov += ci["lo"] <= mu <= ci["hi"]
                width += ci["hi"] - ci["lo"]
            lines.append(f"| {name} | {n} | {cov / (reps // 4):.3f} | {width / (reps // 4):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/eval-intervals.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lines = ["# Coverage of the eval intervals", "", f"`python benchmarks/eval_intervals.py --reps {args.reps}` "
             "(rlaif/pipeline/intervals.py). Exact coverage sums the probability of every outcome whose interval holds "
             "the true value; the grid of three-point distributions is P(first, middle) in steps of 0.1 (66 points).", ""]
    exact_rates(lines)
    exact_trinomial(lines, "Win rates (1 / 0.5 / 0): Clopper-Pearson at wins + ties/2, exact coverage",
                    lambda o: win_rate([1.0] * o[0] + [0.5] * o[1] + [0.0] * o[2]), lambda p: p[0] + p[1] / 2, (5, 8, 20, 100))
    exact_trinomial(lines, "Paired differences of rates (+1 / 0 / -1): betting interval, exact coverage",
                    lambda o: paired_difference([1.0] * o[0] + [0.0] * (o[1] + o[2]), [0.0] * (o[0] + o[1]) + [1.0] * o[2], seed=0, bounds=(0.0, 1.0)),
                    lambda p: p[0] - p[2], (5, 8, 20))
    simulated(lines, args.reps, args.seed)
    lines += ["", f"Total {time.perf_counter() - t0:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
