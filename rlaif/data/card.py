"""The dataset card ``rlaif publish`` writes: YAML metadata for the Hub, then provenance in plain words.

The metadata (``huggingface_hub.DatasetCardData``): ``configs`` (one per dataset, its parquet files,
which ``datasets.load_dataset(DIR, NAME)`` reads), ``license``, ``language`` when given,
``task_categories``, ``tags``, ``size_categories`` (the Hub's bins, by the largest config) and
``pretty_name``. The text says, from the run's ``manifest.json``: what each config holds and where
its labels come from; the model, prompts and constitution with their hashes; the judge, its
settings, its diagnostics and warnings, its judge card (``RUN/judge_card.json``) where there is one;
agreement with reference labels and with human ratings (``rlaif review``) where there are any; and
length statistics. Every number is read from the run, nothing is made up: a section with nothing to
say says so.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

SIZE_BINS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
             (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
SOURCES = {
    "revision": "the final critique-and-revision answer is chosen over the first answer (Constitutional AI, Bai et al. 2022)",
    "ai": "an AI judge compared the two answers under the constitution's principles (RLAIF; both orders averaged)",
    "reward-model": "best versus worst of N samples under a reward model (best-of-N)",
    "west-of-n": "best versus worst of N samples under a reward model or function (West-of-N, Pace et al. 2024)",
    "rlcd": "answers to a positive and a negative system prompt made from one principle; the positive one is chosen "
            "by construction (RLCD, Yang et al. 2023)",
    "human": "a person's rating",
}
DESCRIBE = {"sft": "conversations for supervised fine-tuning: TRL's conversational `messages`",
            "preferences": "preference pairs: TRL's conversational `prompt` / `chosen` / `rejected`, with `label_source`",
            "steps": "step-level labels of answers"}


def size_category(n: int) -> str:
    return next((name for top, name in SIZE_BINS if n < top), "n>1T")


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _share(rate: Any, n: Any, exact: bool = True) -> str:
    """A share of n with its 95% interval: Clopper-Pearson (``exact``) or Wilson, as rlaif computes them elsewhere."""
    if rate is None or not n:
        return "n/a"
    k = round(rate * n)
    if exact:
        from rlaif.pipeline.intervals import clopper_pearson

        ci = clopper_pearson(k, n)
        lo, hi = ci["lo"], ci["hi"]
    else:
        from rlaif.stats_intervals import wilson

        lo, hi = wilson(k, n)
    return f"{_pct(rate)} of {n} [95% interval {_pct(lo)}, {_pct(hi)}]"


def _strata(longer: dict[str, Any], shorter: dict[str, Any], key: str, which: str, exact: bool = True) -> str:
    return (f"where {which} is the longer one {_share(longer.get(key), longer.get('n'), exact)}, "
            f"where it is the shorter one {_share(shorter.get(key), shorter.get('n'), exact)}")


def _assistant_text(messages: Sequence[dict[str, Any]]) -> str:
    return messages[-1]["content"] if messages else ""


def length_stats(configs: dict[str, Any]) -> list[str]:
    """Lines on answer lengths in characters, computed from the rows themselves."""
    lines = []
    if "sft" in configs:
        n = [len(_assistant_text(m)) for m in configs["sft"]["messages"]]
        lines.append(f"- sft: the assistant's answer is {statistics.mean(n):.0f} characters on average "
                     f"(median {statistics.median(n):.0f}, min {min(n)}, max {max(n)}).")
    if "preferences" in configs:
        ds = configs["preferences"]
        c = [len(_assistant_text(m)) for m in ds["chosen"]]
        r = [len(_assistant_text(m)) for m in ds["rejected"]]
        longer = sum(a > b for a, b in zip(c, r)) / len(c)
        lines.append(f"- preferences: chosen {statistics.mean(c):.0f} vs rejected {statistics.mean(r):.0f} characters on "
                     f"average; the chosen answer is the longer one in {_pct(longer)} of {len(c)} pairs.")
    return lines


def _judge_section(manifest: dict[str, Any], judge_card: Any, humans: dict[str, Any] | None) -> list[str]:
    from rlaif.pipeline.diagnostics import MIN_PAIRS_LENGTH, MIN_PAIRS_ORDER, format_diagnostics, run_warnings

    s = manifest.get("settings") or {}
    label = s.get("label") or {}
    lines = ["## The judge", ""]
    if manifest.get("diagnostics"):
        judge = (s.get("feedback_model") or label.get("feedback_model") or (manifest.get("model") or {}).get("resolved")
                 or "the policy model")
        how = ("K sampled verdicts per comparison (votes with a uniform prior)" if label.get("verdict") == "sampled"
               else "the option tokens' log-probabilities")
        k = label.get("ensemble", "?")
        lines += [f"AI labels by `{judge}`, read from {how}; {k} principle{'' if k == 1 else 's'} per pair, "
                  f"{'both orders' if label.get('both_orders', True) else 'one order'}"
                  f"{', chain of thought' if label.get('cot') else ''}. Its diagnostics over this run:", "", "```",
                  *format_diagnostics(manifest["diagnostics"], manifest.get("length_control")), "```", ""]
        warnings = run_warnings(manifest)
        lines += [f"- **{w}**" for w in warnings] or [
            f"- No warning from rlaif's checks of the judge (they need at least {MIN_PAIRS_ORDER} pairs for the order "
            f"consistency and {MIN_PAIRS_LENGTH} for the length bias; see the numbers above)."]
        if manifest.get("verdicts"):
            v = manifest["verdicts"]
            lines.append(f"- Sampled verdicts: {v['samples']} per comparison ({v['format']}); {v['malformed']} malformed "
                         f"verdicts were asked again; {v['failed_malformed']} pairs failed for them and are not in the data.")
        lines.append("")
    else:
        lines += ["No AI judge labelled this run's pairs (see the label sources above).", ""]
    check = manifest.get("pair_check")
    if check:
        lines += [f"The judge also checked the constructed pairs: it agreed with the construction on "
                  f"{_share(check.get('agreement'), check.get('judged'))} judged pairs ({check.get('n')} checked, "
                  f"{check.get('ties', 0)} ties, {check.get('failed', 0)} failed).", ""]
    if judge_card is not None:
        lines += ["Judge card (`provenance/judge_card.json`):", "", "```json", json.dumps(judge_card, indent=2)[:6000], "```", ""]
    agreement = manifest.get("agreement")
    if agreement:
        o = agreement["overall"]
        bl = o.get("by_length") or {}
        lines += [f"Agreement with reference labels: {_share(o['agreement'], o['n'])} pairs (a tie counts as a miss); "
                  f"length-controlled {_pct(o.get('length_controlled_agreement'))}, the mean of the two strata: "
                  f"{_strata(bl.get('longer') or {}, bl.get('shorter') or {}, 'agreement', 'the better answer')}.", ""]
    if humans:
        a = humans["agreement"]["overall"]
        lines += [f"Agreement with human ratings (`rlaif review`): the AI's chosen answer was the one people preferred in "
                  f"{_share(a['rate'], a['n'], exact=False)} ratings ({humans['reviewed_pairs']} pairs, "
                  f"{len(humans['reviewers'])} reviewers)."]
        rnd = humans.get("random") or {}
        if (rnd.get("overall") or {}).get("n"):
            bl, which = rnd["by_length"], "the AI's chosen answer"
            lines.append(f"On the pairs drawn at random for review: length-controlled {_pct(rnd.get('length_controlled'))}; "
                         f"{_strata(bl['longer'], bl['shorter'], 'rate', which, exact=False)}.")
        lines.append("")
    else:
        lines += ["No human ratings of these pairs were recorded.", ""]
    return lines


def dataset_card(manifest: dict[str, Any], configs: dict[str, Any], files: dict[str, str], *, pretty_name: str, license: str = "other",
                 language: list[str] | None = None, judge_card: Any = None, humans: dict[str, Any] | None = None,
                 missing: Sequence[str] = ()) -> str:
    """The README.md text of a published folder (see the module docstring); ``files``: each config's parquet file."""
    from huggingface_hub import DatasetCard, DatasetCardData

    sizes = {name: len(ds) for name, ds in configs.items()}
    meta = DatasetCardData(
        license=license, language=language or None, pretty_name=pretty_name,
        task_categories=["text-generation"], size_categories=[size_category(max(sizes.values()))],
        tags=["rlaif", "synthetic", *(["preference", "dpo"] if "preferences" in configs else []), *(["sft"] if "sft" in configs else [])],
        configs=[{"config_name": name, "data_files": [{"split": "train", "path": files[name]}],
                  **({"default": True} if name == next(iter(configs)) else {})} for name in configs],
    )
    s = manifest.get("settings") or {}
    const = manifest.get("constitution") or {}
    body = [f"# {pretty_name}", "",
            f"Synthetic data made with rlaif {manifest.get('rlaif_version', '')} "
            f"({s.get('kind', 'generate')} run, created {manifest.get('created', 'at an unknown time')}).", "",
            "| config | rows | what it holds |", "|---|---|---|",
            *(f"| `{name}` | {n} | {DESCRIBE[name]} |" for name, n in sizes.items()), ""]
    if missing:
        body += [f"Left out because they are empty: {', '.join(missing)}.", ""]
    body += ["```python", "from datasets import load_dataset", "",
             *(f'{name} = load_dataset("<this folder or Hub id>", "{name}", split="train")' for name in sizes), "```", ""]
    if "preferences" in configs:
        from collections import Counter

        counts = Counter(configs["preferences"]["label_source"])
        body += ["## Where the labels come from", ""]
        body += [f"- `{src}` ({n} pairs): {SOURCES.get(src, 'see rlaif docs')}" for src, n in counts.most_common()] + [""]
    model = (manifest.get("model") or {}).get("resolved") or (s.get("model") if isinstance(s.get("model"), str) else None)
    prompts = manifest.get("prompts") or {}
    body += ["## How it was made", ""]
    if model:
        body.append(f"- Policy model: `{model}`.")
    if prompts:
        where = prompts.get("path") or ", ".join(prompts.get("sources") or []) or "?"
        body.append(f"- Prompts: {prompts.get('count', '?')} from `{Path(where).name if prompts.get('path') else where}`"
                    + (f" (sha256 {prompts['sha256'][:16]}...)" if prompts.get("sha256") else "") + ".")
    if s.get("kind") == "label" and manifest.get("source"):
        body.append(f"- Pairs: {(manifest.get('counts') or {}).get('pairs', '?')} from `{Path(str(manifest['source'])).name}`, "
                    f"judged as described below.")
    if const:
        body.append(f"- Constitution `{const.get('name')}`, sha256 `{const.get('sha256')}`; its files (copies in "
                    "`provenance/`):")
        body += [f"  - `{rel}` sha256 `{h}`" for rel, h in sorted((const.get("files") or {}).items())]
        used = (manifest.get("counts") or {}).get("principles_used")
        if used:
            body.append("- Principles used in critiques: " + ", ".join(f"{k} ({v})" for k, v in used.items()) + ".")
    git = manifest.get("git") or {}
    if git.get("commit"):
        body.append(f"- rlaif commit `{git['commit']}`{' (with local changes)' if git.get('dirty') else ''}.")
    body += ["- The full settings and counts are in `provenance/manifest.json`.", ""]
    body += _judge_section(manifest, judge_card, humans)
    body += ["## Lengths", "", *length_stats(configs)]
    if manifest.get("preference_lengths"):
        from rlaif.pipeline.diagnostics import format_preference_lengths

        body += [f"- In {manifest['preference_lengths'].get('unit', 'tokens')}: "
                 + format_preference_lengths(manifest["preference_lengths"]).removeprefix("lengths").strip()]
    body += ["", "## Limitations", "",
             "All answers are machine-written and all labels machine-made (see above for how); check the judge's "
             "diagnostics before training on them, and review a sample by hand (`rlaif review`).", ""]
    return str(DatasetCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body)))
