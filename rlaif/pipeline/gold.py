"""Human labels as gold (``rlaif export RUN --prefer human --out DIR``).

The rules, applied to each pair of the run:

- **Whose rating counts.** Of each reviewer, the latest rating of the pair (as on the review page;
  ratings from several ``--reviews`` files are merged, a submission counted once).
- **Several reviewers** are combined by the mean of their soft labels: each rating becomes
  P(chosen is better) = (likert - 0.5) / 8 (:func:`rlaif.pipeline.ratings.soft_label`), and the
  pair's human P is the mean over its reviewers. Above 0.5 the humans prefer the run's chosen
  response, below 0.5 the rejected one (the pair is then swapped); exactly 0.5 (the reviewers
  cancel out) is no verdict: the pair keeps the label it had, flagged ``humans-split``.
- **The label.** A pair with a human verdict gets ``label_source: human``, ``chosen_prob`` = the
  human P of its (new) chosen response, and ``likert`` / ``margin`` from that P on the AI's scale.
  The label it replaced stays beside it: ``ai_label_source``, ``ai_chosen_prob`` (the AI's P that
  the gold chosen response is better; None for labels without one), ``ai_agrees`` (whether the
  label it replaced had chosen the same response; None for an AI tie). Also kept:
  ``human_ratings`` (reviewers), ``human_likerts`` (their ratings, 8 = the gold chosen much better)
  and ``human_reviewers``. Swapped pairs are flagged ``human-swapped``; per-principle AI
  probabilities and ``response_ids`` are turned with the pair.
- **Flags.** Each response's flags are the union of its reviewers' flags
  (``human_flags_chosen``, ``human_flags_rejected``, in the gold orientation). A pair is dropped
  when its gold chosen response carries any flag of ``drop_flags`` (default: ``harmful``):
  training must not pull towards a response a person called harmful, even as the lesser evil.
  Other flags are kept as columns and change nothing.
- **Unrated pairs** keep their label (every human column empty), or are left out with ``rated_only``.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlaif.data.rows import relabelled_row
from rlaif.pipeline.ratings import RatedRun, soft_label
from rlaif.review.data import FLAGS

DEFAULT_DROP_FLAGS = ("harmful",)


def _empty_human(row: dict[str, Any]) -> dict[str, Any]:
    """The human columns of a row without a human verdict (the label it has is kept)."""
    cp = row.get("chosen_prob")
    return {"ai_label_source": row.get("label_source"),
            "ai_chosen_prob": float(cp) if isinstance(cp, (int, float)) and not isinstance(cp, bool) else None,
            "ai_agrees": None, "human_ratings": 0, "human_likerts": [], "human_reviewers": [],
            "human_flags_chosen": [], "human_flags_rejected": []}


def gold_rows(rated: RatedRun, drop_flags: Sequence[str] = DEFAULT_DROP_FLAGS,
              rated_only: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The gold rows of a rated run and the counts (see the module docstring)."""
    from rlaif.pipeline.judge import likert, margin

    unknown = set(drop_flags) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown flag(s) {sorted(unknown)}; flags are {', '.join(FLAGS)}")
    by_pair = rated.reviews_by_pair()
    rows: list[dict[str, Any]] = []
    counts = {"pairs": len(rated.rows), "rated_pairs": 0, "human_labels": 0, "swapped": 0, "ai_agreed": 0, "humans_split": 0,
              "dropped": 0, "unrated_kept": 0, "unrated_left_out": 0}
    dropped: list[dict[str, Any]] = []
    for row, pair in zip(rated.rows, rated.pairs):
        reviews = sorted(by_pair.get(pair.id, []), key=lambda r: r.reviewer)
        base = {**row, **_empty_human(row)}
        if not reviews:
            if rated_only:
                counts["unrated_left_out"] += 1
                continue
            counts["unrated_kept"] += 1
            rows.append(base)
            continue
        counts["rated_pairs"] += 1
        human_p = sum(soft_label(r.likert) for r in reviews) / len(reviews)
        flags_c = sorted({f for r in reviews for f in r.flags_chosen}, key=list(FLAGS).index)
        flags_r = sorted({f for r in reviews for f in r.flags_rejected}, key=list(FLAGS).index)
        swap = human_p < 0.5
        likerts = [9 - r.likert if swap else r.likert for r in reviews]
        human = {"human_ratings": len(reviews), "human_likerts": likerts, "human_reviewers": [r.reviewer for r in reviews],
                 "human_flags_chosen": flags_r if swap else flags_c, "human_flags_rejected": flags_c if swap else flags_r}
        row_flags = list(row.get("flags") or [])
        if human_p == 0.5:
            out = {**base, **human, "flags": sorted(set(row_flags) | {"humans-split"})}
        else:
            ai_cp = base["ai_chosen_prob"]
            ai_tie = "tie" in row_flags or row.get("label_source") == "human"  # no side, or no label of its own to compare
            p = max(human_p, 1.0 - human_p)
            out = relabelled_row(base, "human", **human, chosen_prob=p, likert=likert(p), margin=margin(p),
                                 ai_chosen_prob=None if ai_cp is None else (1.0 - ai_cp if swap else ai_cp),
                                 ai_agrees=None if ai_tie else not swap,
                                 flags=sorted((set(row_flags) - {"tie"}) | {"human-label"} | ({"human-swapped"} if swap else set())))
            if swap:
                out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
                if isinstance(row.get("label_principle_probs"), list):
                    out["label_principle_probs"] = [1.0 - q for q in row["label_principle_probs"]]
                if isinstance(row.get("response_ids"), list):
                    out["response_ids"] = list(reversed(row["response_ids"]))
        bad = sorted(set(out["human_flags_chosen"]) & set(drop_flags))
        if bad:
            counts["dropped"] += 1
            dropped.append({"id": pair.id, "reason": f"the chosen response is flagged {', '.join(bad)}"})
            continue
        if out["label_source"] == "human":
            counts["human_labels"] += 1
            counts["swapped"] += swap
            counts["ai_agreed"] += out["ai_agrees"] is True
        else:
            counts["humans_split"] += 1
        rows.append(out)
    counts["preference_rows"] = len(rows)
    return rows, {"counts": counts, "dropped": dropped}
