"""What changed between two labelled runs of the same pairs (``rlaif diff``, and what
``rlaif relabel`` prints).

* **Comparisons** (where both runs kept them, :mod:`rlaif.pipeline.judge_records`): per pair,
  principle and order, whether B's request is the same as A's (in a relabel: reused, the line
  copied from A), new (re-sent), or only in A (a removed principle's, dropped).
* **Labels.** A pair counts when both runs labelled it (no failure, not identical responses).
  It *flipped* when the two runs chose different responses; a label that became a tie, or a
  tie that got a side, is counted apart and is not a flip. The flip rate is flips / pairs
  counted. By principle: how often that principle's own verdict (its P(a) on either side of
  0.5) changed among the pairs both runs judged with it, and how many flipped pairs it judged in B.
* **Agreement** with the reference labels (each run's manifest: plain and length-controlled) and
  with the human ratings ``rlaif review`` stored in either run folder (``reviews.jsonl``; each
  rating read in its own run's orientation, the latest of a reviewer for a pair counts; with
  the texts at hand also split by whether the human's choice is the longer answer).
* **Judge diagnostics** (:mod:`rlaif.pipeline.diagnostics`) of each run's manifest, side by side.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlaif.pipeline.diagnostics import length_split_agreement
from rlaif.pipeline.judge_records import index_records
from rlaif.pipeline.labelled_runs import LabelledRun

MAX_FLIP_EXIT = 6
"""Exit status of ``rlaif diff`` / ``rlaif relabel`` when the flip rate is above ``--max-flip-rate``."""

DIAGNOSTICS = (("order_consistency", "orders agree", "pct"), ("position_bias", "P(first slot)", "num"),
               ("length_correlation", "r(log-odds, length)", "signed"), ("longer_chosen_rate", "longer chosen", "pct"),
               ("tie_rate", "ties", "pct"))


class DiffError(ValueError):
    """Two runs that cannot be compared (one line, for the command line)."""


def _side(p: float) -> str | None:
    return "a" if p > 0.5 else "b" if p < 0.5 else None


def judgement_changes(a: LabelledRun, b: LabelledRun) -> dict[str, Any] | None:
    """B's comparisons against A's, by principle (None unless both runs kept them)."""
    if a.records is None or b.records is None:
        return None
    ia, ib = index_records(a.records), index_records(b.records)
    by: dict[str, Counter] = {}
    for k, r in ib.items():
        old = ia.get(k)
        kind = "same_request" if old is not None and old.get("key") == r.get("key") else "new_request"
        by.setdefault(k[1], Counter())[kind] += 1
    for k in ia.keys() - ib.keys():
        by.setdefault(k[1], Counter())["only_in_a"] += 1
    total = sum(by.values(), Counter())
    return {"same_request": total["same_request"], "new_request": total["new_request"], "only_in_a": total["only_in_a"],
            "by_principle": {p: dict(c) for p, c in sorted(by.items())}}


def label_changes(a: LabelledRun, b: LabelledRun, examples: int = 3) -> dict[str, Any]:
    lb = {lab.pair_id: lab for lab in b.labels}
    texts = {p.id: p for p in (b.pairs or a.pairs or [])}
    c: Counter = Counter()
    judged: Counter = Counter()
    verdict_flips: Counter = Counter()
    label_flips: Counter = Counter()
    flipped = []
    for la in a.labels:
        lab = lb[la.pair_id]
        if "identical" in la.flags and "identical" in lab.flags:
            continue
        if la.error or lab.error:
            c["failed_a"] += la.error is not None
            c["failed_b"] += lab.error is not None
            continue
        c["compared"] += 1
        before, after = la.chosen, lab.chosen
        if before and after and before != after:
            c["flipped"] += 1
            flipped.append((la, lab))
            for p in lab.per_principle:
                label_flips[p] += 1
        elif before and not after:
            c["became_tie"] += 1
        elif after and not before:
            c["tie_resolved"] += 1
        for p in la.per_principle.keys() & lab.per_principle.keys():
            judged[p] += 1
            x, y = _side(la.per_principle[p]), _side(lab.per_principle[p])
            verdict_flips[p] += bool(x and y and x != y)
    flipped.sort(key=lambda ab: -abs(ab[1].p_a - ab[0].p_a))
    shown = []
    for la, lab in flipped[:examples]:
        changed = {p: [la.per_principle.get(p), lab.per_principle.get(p)] for p in dict.fromkeys([*la.per_principle, *lab.per_principle])
                   if la.per_principle.get(p) != lab.per_principle.get(p)}
        pair = texts.get(la.pair_id)
        prompt = next((m["content"] for m in reversed(pair.prompt) if m["role"] == "user"), "") if pair else ""
        shown.append({"id": la.pair_id, "from": la.chosen, "to": lab.chosen, "p_a": [la.p_a, lab.p_a], "principles": changed,
                      "prompt": " ".join(prompt.split())[:100]})
    principles = sorted(judged.keys() | label_flips.keys(), key=lambda p: (-label_flips[p], -verdict_flips[p], p))
    n = c["compared"]
    return {
        "pairs": len(a.labels), "compared": n, "failed_a": c["failed_a"], "failed_b": c["failed_b"],
        "flipped": c["flipped"], "flip_rate": c["flipped"] / n if n else 0.0,
        "became_tie": c["became_tie"], "tie_resolved": c["tie_resolved"],
        "by_principle": {p: {"judged_both": judged[p], "verdict_flipped": verdict_flips[p], "labels_flipped": label_flips[p]}
                         for p in principles},
        "examples": shown,
    }


def _reference(manifest: dict[str, Any]) -> dict[str, Any] | None:
    ag = manifest.get("agreement")
    if not ag or not ag.get("overall", {}).get("n"):
        return None
    return {"n": ag["overall"]["n"], "agreement": ag["overall"]["agreement"], "length_controlled": ag.get("length_controlled_agreement")}


def _ratings(run: LabelledRun) -> dict[tuple[str, str], tuple[str, str]]:
    """(reviewer, pair id) -> (time, the side the human preferred, 'a' or 'b') of the run's ratings."""
    path = run.path / "reviews.jsonl"
    if not path.exists():
        return {}
    from rlaif.review.data import ReviewStore

    final = {lab.pair_id: lab for lab in run.labels}
    out = {}
    for r in ReviewStore(path, dict.fromkeys(final)).reviews():
        chosen = final[r.pair_id].chosen or "a"  # the preference row's chosen side (a kept tie: its own order)
        out[(r.reviewer, r.pair_id)] = (r.time, chosen if r.prefers_chosen else ("b" if chosen == "a" else "a"))
    return out


def human_agreement(a: LabelledRun, b: LabelledRun) -> dict[str, Any] | None:
    """Agreement of each run's final labels with the ratings stored in either run folder."""
    ratings = _ratings(a)
    for k, v in _ratings(b).items():
        if k not in ratings or v[0] > ratings[k][0]:
            ratings[k] = v
    if not ratings:
        return None
    texts = {p.id: p for p in (a.pairs or b.pairs or [])}
    out: dict[str, Any] = {"ratings": len(ratings), "pairs": len({pid for _, pid in ratings})}
    for name, run in (("a", a), ("b", b)):
        final = {lab.pair_id: lab for lab in run.labels}
        hits = [(pid, side, final[pid].chosen == side) for (_, pid), (_, side) in ratings.items() if pid in final]
        row: dict[str, Any] = {"agreement": sum(h for *_, h in hits) / len(hits) if hits else None, "length_controlled": None}
        if hits and all(pid in texts for pid, *_ in hits):
            recs = []
            for pid, side, hit in hits:
                p = texts[pid]
                better, other = (p.response_a, p.response_b) if side == "a" else (p.response_b, p.response_a)
                recs.append((len(better), len(other), hit))
            split = length_split_agreement(recs)
            row["length_controlled"] = split["length_controlled"]
            row["by_length"] = {k: split[k] for k in ("longer", "shorter")}
        out[name] = row
    return out


def compare_runs(a: LabelledRun, b: LabelledRun, examples: int = 3) -> dict[str, Any]:
    """Everything ``rlaif diff A B`` prints (see the module docstring); ``DiffError`` unless the
    two runs labelled the same pairs."""
    if sorted(a.pair_ids) != sorted(b.pair_ids):
        only_a, only_b = set(a.pair_ids) - set(b.pair_ids), set(b.pair_ids) - set(a.pair_ids)
        raise DiffError(f"{a.path} and {b.path} did not label the same pairs ({len(only_a)} only in the first, "
                        f"{len(only_b)} only in the second)")
    ha, hb = a.pairs_sha256, b.pairs_sha256
    if ha and hb and ha != hb:
        raise DiffError(f"{a.path} and {b.path} labelled pairs with the same ids but other texts: they are not the same pairs")
    relabel = (b.settings.get("relabel") or {}).get("from") == a.fingerprint
    diag_a, diag_b = a.manifest.get("diagnostics") or {}, b.manifest.get("diagnostics") or {}
    return {
        "a": str(a.path), "b": str(b.path), "b_relabels_a": relabel,
        "constitution": [(a.manifest.get("constitution") or {}).get("sha256"), (b.manifest.get("constitution") or {}).get("sha256")],
        "judgements": judgement_changes(a, b),
        "labels": label_changes(a, b, examples),
        "reference": {"a": _reference(a.manifest), "b": _reference(b.manifest)},
        "human": human_agreement(a, b),
        "diagnostics": {k: [diag_a.get(k), diag_b.get(k)] for k, *_ in DIAGNOSTICS},
    }


def _fmt(x: Any, how: str) -> str:
    if x is None:
        return "n/a"
    return {"pct": f"{x:.1%}", "num": f"{x:.3f}", "signed": f"{x:+.3f}"}[how]


def _arrow(pair: list[Any], how: str = "pct") -> str:
    a, b = pair
    delta = "" if a is None or b is None else f" ({100 * (b - a):+.1f} pt)" if how == "pct" else f" ({b - a:+.3f})"
    return f"{_fmt(a, how)} -> {_fmt(b, how)}{delta}"


def format_comparison(cmp: dict[str, Any]) -> list[str]:
    lines = []
    j = cmp["judgements"]
    if j is not None:
        same, new = ("reused", "re-sent") if cmp["b_relabels_a"] else ("with the same request", "with a new request")
        lines.append(f"judgements: {j['new_request']} {new}, {j['same_request']} {same}"
                     + (f", {j['only_in_a']} dropped" if j["only_in_a"] else "")
                     + ("" if cmp["b_relabels_a"] else " (B's comparisons against A's)"))
        for p, c in j["by_principle"].items():
            if c.get("new_request") or c.get("only_in_a"):
                lines.append(f"  {p:<28} {c.get('new_request', 0):>6} {new}  {c.get('same_request', 0):>6} {same}"
                             + (f"  {c['only_in_a']} dropped" if c.get("only_in_a") else ""))
    L = cmp["labels"]
    lines.append(f"labels: {L['flipped']} of {L['compared']} pairs flipped ({L['flip_rate']:.1%}); "
                 f"{L['became_tie']} became ties, {L['tie_resolved']} ties got a side"
                 + (f"; failed: {L['failed_a']} -> {L['failed_b']}" if L["failed_a"] or L["failed_b"] else ""))
    changed = dict(sorted(((p, c) for p, c in L["by_principle"].items() if c["verdict_flipped"]),
                          key=lambda pc: (-pc[1]["verdict_flipped"], pc[0])))  # the principles whose own verdicts moved
    if changed:
        lines.append(f"  {'principle':<28} {'judged':>7} {'its verdict flipped':>20} {'pair labels flipped':>20}")
        for p, c in changed.items():
            lines.append(f"  {p:<28} {c['judged_both']:>7} {c['verdict_flipped']:>20} {c['labels_flipped']:>20}")
    for ex in L["examples"]:
        moved = ", ".join(f"{p} {_fmt(x, 'num')} -> {_fmt(y, 'num')}" for p, (x, y) in ex["principles"].items())
        lines.append(f"  e.g. {ex['id']}: {ex['from']} -> {ex['to']}, P(a) {ex['p_a'][0]:.3f} -> {ex['p_a'][1]:.3f}"
                     + (f" ({moved})" if moved else "") + (f"  \"{ex['prompt']}\"" if ex["prompt"] else ""))
    ref = cmp["reference"]
    if ref["a"] or ref["b"]:
        ra, rb = ref["a"] or {}, ref["b"] or {}
        lines.append(f"reference labels: length-controlled agreement {_arrow([ra.get('length_controlled'), rb.get('length_controlled')])}; "
                     f"agreement {_arrow([ra.get('agreement'), rb.get('agreement')])} of {rb.get('n', ra.get('n'))} pairs")
    h = cmp["human"]
    if h:
        lines.append(f"human ratings ({h['ratings']} of {h['pairs']} pairs): length-controlled agreement "
                     f"{_arrow([h['a']['length_controlled'], h['b']['length_controlled']])}; "
                     f"agreement {_arrow([h['a']['agreement'], h['b']['agreement']])}")
    d = cmp["diagnostics"]
    if any(v != [None, None] for v in d.values()):
        lines.append("judge diagnostics:")
        lines += [f"  {label:<20} {_arrow(d[k], how)}" for k, label, how in DIAGNOSTICS]
    return lines
