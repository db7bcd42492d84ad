"""The eval section (``rlaif eval`` runs): win rates with their intervals, harmlessness and
over-refusal of both models, answer lengths, reward scores, KL, the judge's questions and a few
answers side by side. Every number comes from the run's ``eval.json`` results (kept in its
manifest); the answers from ``answers.jsonl``."""

from __future__ import annotations

from typing import Any

from rlaif.data import textio
from rlaif.report import plots
from rlaif.report.folders import ReportError, RunFolder

MAX_TEXT = 1500
EXAMPLES = 6


def applies(run: RunFolder) -> bool:
    return run.kind == "eval"


def _ci(x: dict[str, Any] | None, pct: bool = True) -> str | None:
    if not x or x.get("mean") is None:
        return None
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3g}")
    bound = lambda v: "n/a" if v is None else f(v)  # noqa: E731
    return f"{f(x['mean'])} [{bound(x['lo'])}, {bound(x['hi'])}]"


def _intervals(interval: dict[str, Any]) -> str:
    methods = interval.get("methods")
    if not methods:  # results of an older rlaif
        return f"95% {interval.get('method', 'bootstrap over prompts')}, {interval.get('resamples')} resamples"
    return (f"95% over prompts: rates {methods['rates']}; win rates {methods['win_rates']}; soft win rate and differences of rates "
            f"{methods['bounded_means']}; rewards and KL {methods['unbounded_means']} ({interval.get('resamples')} resamples)")


def _check_row(name: str, category: str, x: dict[str, Any]) -> dict[str, Any]:
    """A row of the checks table: both models' rates, the difference, the counts and the undecided answers."""
    n = [x[role]["n"] for role in ("policy", "baseline")]
    und = [x[role].get("undecided", 0) for role in ("policy", "baseline")]
    return {"name": name, "category": category, "policy": _ci(x["policy"]), "baseline": _ci(x["baseline"]),
            "difference": _ci(x["difference"]), "n": n[0] if n[0] == n[1] else f"{n[0]} / {n[1]}", "undecided": f"{und[0]} / {und[1]}"}


def _clip(text: Any) -> dict[str, Any]:
    text = text if isinstance(text, str) else ""
    return {"text": text[:MAX_TEXT], "cut": max(0, len(text) - MAX_TEXT)}


def _answers(run: RunFolder) -> list[dict[str, Any]]:
    f = run.path / "answers.jsonl"
    return textio.read_jsonl(f, ReportError, what="damaged answer row") if f.is_file() else []


def _examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few prompts: one per category first, then the rest in order."""
    picked, seen = [], set()
    for r in rows:
        if r.get("category") not in seen:
            seen.add(r.get("category"))
            picked.append(r)
    picked += [r for r in rows if r not in picked][: max(0, EXAMPLES - len(picked))]
    out = []
    for r in picked[:EXAMPLES]:
        prompt = r.get("prompt") or []
        out.append({"id": r.get("id"), "category": r.get("category"), "subcategory": r.get("subcategory"),
                    "prompt": [{"role": m.get("role", ""), **_clip(m.get("content"))} for m in prompt if isinstance(m, dict)],
                    "policy": _clip(r.get("policy")), "baseline": _clip(r.get("baseline")), "winner": r.get("winner") or "not judged",
                    "p": r.get("p_policy_better"),
                    "checks": [(name, r.get(f"policy_{name}"), r.get(f"baseline_{name}")) for name in ("refusal", "safe", "reference")
                               if r.get(f"policy_{name}") is not None or r.get(f"baseline_{name}") is not None]})
    return out


def build(run: RunFolder) -> dict[str, Any]:
    m = run.manifest
    res = m.get("results")
    if not isinstance(res, dict):
        raise ReportError(f"{run.path}/manifest.json has no eval results")
    models = m.get("settings", {}).get("models", {})
    ev = m.get("settings", {}).get("eval", {})
    win, harm, over, kl = res["win_rate"], res["harmlessness"], res["over_refusal"], res["kl"]
    images = []
    cats = list(win["by_category"])
    if win["overall"]["n"]:
        images.append({"id": "eval-win", "title": "Win rate of the policy, by category", "src": plots.interval_bars(
            ["all", *cats], {"policy vs baseline": [win["overall"], *win["by_category"].values()]},
            "Win rate of the policy (ties count half), 95% intervals", "win rate", reference=0.5)})
    if harm["policy"]["n"] or over["policy"]["n"]:
        images.append({"id": "eval-safety", "title": "Harmless vs over-refusal", "src": plots.interval_bars(
            [f"harmless on {harm['category']}", f"refused on {over['category']}"],
            {role: [harm[role], over[role]] for role in ("policy", "baseline")},
            "Harmless answers (higher is better) and over-refusals (lower is better)", "share of answers")})
    ref = res["refusal_by_category"]
    if any(x["n"] for x in ref["policy"].values()):
        images.append({"id": "eval-refusal", "title": "Refusals by category", "src": plots.interval_bars(
            list(ref["policy"]), {role: list(ref[role].values()) for role in ("policy", "baseline")},
            "Answers the judge rates as refusals, by category", "share of answers")})
    lengths = res["lengths"]
    h = {role: lengths[role].get("histogram") or {} for role in ("policy", "baseline")}
    if h["policy"].get("edges") and (sum(h["policy"]["counts"]) or sum(h["baseline"]["counts"])):
        images.append({"id": "eval-lengths", "title": "Answer lengths", "src": plots.histograms(
            h["policy"]["edges"], {role: h[role]["counts"] for role in h}, "Answer lengths", "tokens", unit="answers")})
    reward = res.get("reward")
    if reward and reward["policy"].get("histogram", {}).get("edges"):
        images.append({"id": "eval-reward", "title": "Reward scores", "src": plots.histograms(
            reward["policy"]["histogram"]["edges"], {role: reward[role]["histogram"]["counts"] for role in ("policy", "baseline")},
            "Reward-model scores", "reward", unit="answers")})
    summary = [("policy", models.get("policy")), ("baseline", models.get("baseline")), ("judge", models.get("judge")),
               ("reward model", models.get("reward") or "none"), ("prompts", res["counts"]["prompts"]),
               ("prompt sets", ", ".join(m.get("prompts", {}).get("sources", []))),
               ("sampling", ", ".join(f"{k} {v}" for k, v in (ev.get("sampling") or {}).items())),
               ("judge ensemble", (ev.get("label") or {}).get("ensemble")),
               ("intervals", _intervals(res.get("interval") or {}))]
    headline = [
        ("win rate of the policy", win["overall"]["mean"], "pct"),
        ("win rate, 95% interval", _ci(win["overall"]), "text"),
        ("harmless, policy", harm["policy"]["mean"], "pct"),
        ("harmless, baseline", harm["baseline"]["mean"], "pct"),
        ("over-refusal, policy", over["policy"]["mean"], "pct"),
        ("over-refusal, baseline", over["baseline"]["mean"], "pct"),
        ("KL(policy || baseline), nats per answer", kl.get("mean"), "num"),
        ("answer tokens, policy (mean)", lengths["policy"]["tokens"]["mean"], "num"),
        ("answer tokens, baseline (mean)", lengths["baseline"]["tokens"]["mean"], "num"),
        ("reward difference (policy - baseline)", reward["difference"]["mean"] if reward else None, "num"),
    ]
    checks = [_check_row(title, x["category"], x) for title, x in (("harmless (rated safe)", harm), ("over-refusal (rated a refusal)", over))]
    ra = res["reference_agreement"]
    if ra["policy"]["n"] or ra["policy"].get("undecided"):
        checks.append(_check_row("agrees with the reference", "prompts with a reference", ra))
    return {
        "summary": summary, "headline": headline, "images": images, "win": win, "checks": checks,
        "win_rows": [(c, _ci(x), x["n"]) for c, x in win["by_category"].items()],
        "sub_rows": [(c, _ci(x), x["n"]) for c, x in win["by_subcategory"].items()],
        "overall": _ci(win["overall"]), "soft": _ci(win["soft"]),
        "kl": {"ci": _ci(kl, pct=False), "per_token": kl.get("per_token"), "n": kl.get("n"), "biased": kl.get("biased")},
        "lengths": [(role, lengths[role]["tokens"], lengths[role]["chars"], lengths[role]["truncated"]) for role in ("policy", "baseline")],
        "reward": [(role, reward[role]) for role in ("policy", "baseline")] if reward else [],
        "reward_diff": _ci(reward["difference"], pct=False) if reward else None,
        "questions": res.get("judge_questions", {}), "examples": _examples(_answers(run)), "notes": list(run.notes),
        "results": res,
    }


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several evals side by side: each run's win rate, harmlessness and over-refusal of its policy."""
    if len(items) < 2:
        return []
    series = {run.label: [ctx["results"]["win_rate"]["overall"], ctx["results"]["harmlessness"]["policy"],
                          ctx["results"]["over_refusal"]["policy"]] for run, ctx in items}
    src = plots.interval_bars(["win rate", "harmless", "over-refusal"], series, "Each eval's policy, 95% intervals",
                              "share")
    return [{"id": "compare-eval", "title": "Win rate, harmlessness and over-refusal", "src": src}]
