"""Calibrating the AI judge on human ratings (``rlaif calibrate``, ``rlaif label --calibration``).

**The model** (Platt scaling with one more feature): for a labelled pair with the judge's
``chosen_prob`` P and ``order_agreement`` o (the share of principles whose two orders agreed),

    P(human prefers chosen) = sigmoid(a + b * logit(P) + c * o)

fitted by maximum likelihood (Newton's method, iteratively reweighted least squares) with a weak
Gaussian prior on (a, b, c) (an L2 penalty of :data:`L2` / 2 * ||w||^2), which keeps the fit finite
when the ratings separate perfectly. o is left out when it does not vary over the rated pairs.

Why this and not isotonic regression per agreement stratum: a person rates a few hundred pairs;
isotonic regression is a step function with as many free levels as there are distinct values,
needs thousands of ratings per stratum to be smooth, and returns 0 or 1 at the ends (a log loss
of infinity on the next surprising pair). The logistic model has three numbers, is monotone in
P by construction when b > 0, covers the judge's usual failure (over- or under-confidence: b below
or above 1) and its position trouble (pairs whose orders disagreed are right less often: c), and
recovers a distortion logit P = k * logit(p_true) exactly (b = 1 / k).

**Target**: the human verdict (``hard``: 1 when the rating prefers the chosen response, Likert >= 5),
or the rating as a probability (``soft``: (likert - 0.5) / 8, :func:`rlaif.pipeline.ratings.soft_label`).
Every rating that counts is one observation (a pair rated by two people counts twice).

**Scores**: Brier score and log loss of the judge's own P and of the calibrated P, the latter
out-of-fold: the ratings are split into :data:`FOLDS` folds by pair (a pair's ratings stay in one
fold), each fold predicted by the model fitted on the others.

**Applying it**: the calibrated P replaces ``chosen_prob``. Where it falls below 0.5, the humans'
likely choice is the other response: chosen and rejected swap (the row is flagged
``calibration-swapped``, its per-principle probabilities turned to the new chosen response), and
the swaps are counted. A swap follows the fitted intercept and slopes, each with its standard
error in the output: pairs whose calibrated P lies just under 0.5 are coin flips for the people
too, and soft-label losses (which read ``chosen_prob``) learn little from them either way.
Ties (no side chosen) are left as they are. A saved calibration applies
only to labels of the same judge and constitution (:meth:`Calibration.check`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rlaif.data import textio

L2 = 1.0
FOLDS = 5
MIN_RATINGS = 20
EPS = 1e-6
TARGETS = ("hard", "soft")
CALIBRATION_KIND = "rlaif-calibration"


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or applied (one line, exit status 2)."""


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iters: int = 100) -> np.ndarray:
    """Penalised logistic regression by Newton's method.

    Args:
        x: ``(n, d)`` design matrix (its first column the constant 1).
        y: ``(n,)`` targets in [0, 1] (soft targets allowed: the loss is the cross-entropy).
        l2: penalty ``l2 / 2 * ||w||^2`` on every coefficient.
    Returns:
        ``(d,)`` coefficients maximising sum(y log s + (1 - y) log(1 - s)) - l2 / 2 ||w||^2, s = sigmoid(x w).
    """
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        s = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (y - s) - l2 * w  # gradient of the penalised log-likelihood
        hess = (x * (s * (1 - s))[:, None]).T @ x + l2 * np.eye(x.shape[1])  # minus its Hessian
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def brier(p: Sequence[float], y: Sequence[float]) -> float:
    return float(np.mean((np.asarray(p) - np.asarray(y)) ** 2))


def log_loss(p: Sequence[float], y: Sequence[float]) -> float:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y, dtype=float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability_bins(p: Sequence[float], y: Sequence[float], bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of the predicted P over [0, 1]: ``n``, mean P and mean target (the share
    of humans preferring the chosen response, with hard targets) of each."""
    out = [{"lo": i / bins, "hi": (i + 1) / bins, "n": 0, "mean_prob": None, "human_rate": None} for i in range(bins)]
    sums = [[0.0, 0.0] for _ in range(bins)]
    for pi, yi in zip(p, y):
        k = min(int(pi * bins), bins - 1)
        out[k]["n"] += 1
        sums[k][0] += pi
        sums[k][1] += yi
    for b, (sp, sy) in zip(out, sums):
        if b["n"]:
            b["mean_prob"], b["human_rate"] = sp / b["n"], sy / b["n"]
    return out


@dataclass(frozen=True)
class Observation:
    pair_id: str
    chosen_prob: float
    order_agreement: float
    y: float


def design(obs: Sequence[Observation], use_order: bool) -> np.ndarray:
    cols = [np.ones(len(obs)), np.array([logit(o.chosen_prob) for o in obs])]
    if use_order:
        cols.append(np.array([o.order_agreement for o in obs]))
    return np.stack(cols, axis=1)


def fold_of(pair_id: str, folds: int) -> int:
    return int.from_bytes(hashlib.sha256(f"rlaif-calibrate-fold\x00{pair_id}".encode()).digest()[:8], "big") % folds


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: ``coef`` = (a, b, c) of the module docstring (c = 0 when order
    agreement was left out), and where it came from."""

    coef: tuple[float, float, float]
    n: int
    n_pairs: int
    target: str
    use_order: bool
    judge: str | None
    constitution_sha256: str | None
    label_settings: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    stderr: tuple[float, float, float] | None = None
    """Standard errors of (a, b, c): square roots of the diagonal of the inverse penalised Hessian."""

    def prob(self, chosen_prob: float, order_agreement: float | None) -> float:
        """The calibrated P(human prefers the chosen response)."""
        a, b, c = self.coef
        o = 1.0 if order_agreement is None else order_agreement
        return sigmoid(a + b * logit(chosen_prob) + c * o)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": CALIBRATION_KIND, "method": "logistic", "model": "sigmoid(a + b * logit(chosen_prob) + c * order_agreement)",
                "coef": {"a": self.coef[0], "b": self.coef[1], "c": self.coef[2]},
                "stderr": None if self.stderr is None else {"a": self.stderr[0], "b": self.stderr[1], "c": self.stderr[2]},
                "n": self.n, "n_pairs": self.n_pairs,
                "target": self.target, "use_order_agreement": self.use_order, "l2": L2, "folds": FOLDS,
                "judge": self.judge, "constitution_sha256": self.constitution_sha256, "label_settings": self.label_settings,
                "cv": self.cv, "source": self.source}

    @staticmethod
    def read(path) -> "Calibration":
        data = textio.read_json(path, CalibrationError)
        if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
            raise CalibrationError(f"{path} is not a calibration file (rlaif calibrate writes one: calibration.json)")
        try:
            coef = tuple(float(data["coef"][k]) for k in ("a", "b", "c"))
            return Calibration(coef, int(data["n"]), int(data["n_pairs"]), str(data["target"]), bool(data["use_order_agreement"]),
                               data.get("judge"), data.get("constitution_sha256"), dict(data.get("label_settings") or {}),
                               dict(data.get("cv") or {}), str(data.get("source", "")),
                               tuple(float(data["stderr"][k]) for k in ("a", "b", "c")) if data.get("stderr") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: a damaged calibration file ({type(exc).__name__}: {exc})") from None

    def check(self, judge: str | None, constitution_sha256: str | None) -> None:
        """Refuse labels of another judge or constitution (:class:`CalibrationError` says which)."""
        if self.judge is not None and judge is not None and judge != self.judge:
            raise CalibrationError(f"the calibration was fitted on the labels of judge {self.judge!r}, not {judge!r}: "
                                   "a judge's probabilities mean something else under another model; calibrate this judge on its own ratings")
        if self.constitution_sha256 and constitution_sha256 and constitution_sha256 != self.constitution_sha256:
            raise CalibrationError(f"the calibration was fitted under constitution {self.constitution_sha256[:12]}, not "
                                   f"{constitution_sha256[:12]}: other principles ask other questions; calibrate on ratings of this constitution")


def fit_calibration(obs: Sequence[Observation], target: str, judge: str | None, constitution_sha256: str | None,
                    label_settings: dict[str, Any] | None = None, source: str = "") -> tuple[Calibration, list[float]]:
    """The calibration fitted on every observation, with the cross-validated scores before and
    after; also the out-of-fold calibrated P of each observation (for the reliability plot)."""
    if len(obs) < MIN_RATINGS:
        raise CalibrationError(f"calibration needs at least {MIN_RATINGS} ratings of AI-labelled pairs (not ties); "
                               f"there are {len(obs)}: rate more pairs with rlaif review")
    y = np.array([o.y for o in obs])
    use_order = len({o.order_agreement for o in obs}) > 1
    x = design(obs, use_order)
    pairs = sorted({o.pair_id for o in obs})
    folds = min(FOLDS, len(pairs))
    fold = np.array([fold_of(o.pair_id, folds) for o in obs])
    oof = np.empty(len(obs))
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        if held.all():  # every pair hashed to one fold: score on the fit of all (said in the output)
            w = fit_logistic(x, y)
        else:
            w = fit_logistic(x[~held], y[~held])
        oof[held] = 1 / (1 + np.exp(-(x[held] @ w)))
    w = fit_logistic(x, y)
    s = 1 / (1 + np.exp(-(x @ w)))
    cov = np.linalg.inv((x * (s * (1 - s))[:, None]).T @ x + L2 * np.eye(x.shape[1]))
    se = np.sqrt(np.diag(cov))
    coef = (float(w[0]), float(w[1]), float(w[2]) if use_order else 0.0)
    stderr = (float(se[0]), float(se[1]), float(se[2]) if use_order else 0.0)
    before = [o.chosen_prob for o in obs]
    cv = {"folds": folds, "before": {"brier": brier(before, y), "log_loss": log_loss(before, y)},
          "after": {"brier": brier(oof, y), "log_loss": log_loss(oof, y)},
          "reliability": {"before": reliability_bins(before, y), "after": reliability_bins(oof.tolist(), y)}}
    cal = Calibration(coef, len(obs), len(pairs), target, use_order, judge, constitution_sha256, label_settings or {}, cv, source, stderr)
    return cal, oof.tolist()


def observations(pairs_by_id: dict[str, Any], reviews: Sequence[Any], target: str) -> list[Observation]:
    """One observation per rating that counts of a pair with an AI label (not a tie)."""
    from rlaif.pipeline.ratings import soft_label

    if target not in TARGETS:
        raise CalibrationError(f"target must be one of {TARGETS}, not {target!r}")
    out = []
    for r in reviews:
        pair = pairs_by_id.get(r.pair_id)
        if pair is None or pair.tie or pair.chosen_prob is None or pair.label_source != "ai":
            continue
        y = float(r.likert >= 5) if target == "hard" else soft_label(r.likert)
        out.append(Observation(pair.id, pair.chosen_prob, 1.0 if pair.order_agreement is None else pair.order_agreement, y))
    return out


def calibrated_row(row: dict[str, Any], cal: Calibration) -> tuple[dict[str, Any], bool]:
    """A preference row with the calibrated ``chosen_prob`` (see the module docstring); whether it
    swapped chosen and rejected. Rows without an AI label, and ties, come back unchanged."""
    from rlaif.pipeline.judge import likert, margin

    cp = row.get("chosen_prob")
    flags = list(row.get("flags") or [])
    if row.get("label_source") != "ai" or not isinstance(cp, (int, float)) or isinstance(cp, bool) or "tie" in flags:
        return dict(row), False
    p = cal.prob(float(cp), row.get("order_agreement"))
    swap = p < 0.5
    out = dict(row)
    if swap:
        out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
        out["label_principle_probs"] = [1.0 - q for q in row.get("label_principle_probs") or []]
        if isinstance(row.get("response_ids"), list):
            out["response_ids"] = list(reversed(row["response_ids"]))
        p = 1.0 - p
    out["judge_chosen_prob"] = 1.0 - float(cp) if swap else float(cp)
    out["chosen_prob"] = p
    out["likert"], out["margin"] = likert(p), margin(p)
    out["flags"] = sorted(set(flags) | {"calibrated"} | ({"calibration-swapped"} if swap else set()))
    return out, swap


def calibrated_label(lab: Any, cal: Calibration, tie_band: float) -> tuple[Any, bool]:
    """``rlaif label --calibration``: a judged :class:`rlaif.pipeline.judge.PairLabel` with its
    P(a) calibrated (the judge's own P(a) kept in ``judge_p_a``); whether the side changed.
    Failed labels, identical responses and ties come back unchanged."""
    from dataclasses import replace

    from rlaif.pipeline.judge import likert, margin

    if lab.error is not None or "identical" in lab.flags or lab.chosen is None:
        return lab, False
    p = cal.prob(lab.chosen_prob, lab.order_agreement)
    swap = p < 0.5
    p_a = p if lab.chosen == "a" else 1.0 - p
    flags = {f for f in lab.flags if f != "tie"} | {"calibrated"} | ({"calibration-swapped"} if swap else set())
    if abs(p_a - 0.5) <= tie_band:
        flags.add("tie")
    judge_p_a = lab.judge_p_a if lab.judge_p_a is not None else lab.p_a
    return replace(lab, p_a=p_a, likert=likert(p_a), margin=margin(p_a), flags=tuple(sorted(flags)), judge_p_a=judge_p_a), swap
