"""DPO on each pair source's data from the demo prompts, evaluated with ``rlaif eval`` against the default model.

    python benchmarks/bench_pair_sources.py [--limit 24] [--eval-limit 8] [--out runs/pair-sources]

Sources, all on the first ``--limit`` shipped prompts with the default model as policy (and judge):

* ``revision``: critique and revision, the revision wins (``rlaif generate --rounds 1``);
* ``ai``: the same pairs labelled by the judge (``--label``; the demo's data);
* ``west-of-n``: best vs worst of 4 samples (``--samples 4 --rounds 0``) under the reward model that
  ``rlaif train rm`` (configs/rm-demo.yaml) trains on the ``ai`` data, as in Pace et al. (a reward
  model from the existing preference data picks the pairs);
* ``rlcd``: answers to a positive vs a negative system prompt from a sampled principle (``--rounds 0``).

The constructed sources are run with ``--label`` so that the judge's agreement with the construction is
reported (the labels stay the construction's). Each source's preferences train DPO with
configs/dpo-demo.yaml (``data=`` and ``name=`` changed), and ``rlaif eval`` compares the result with the
default model (``--limit`` prompts of each shipped set, 128 tokens), as ``make demo-train`` does. Every
step is skipped when its output exists, so a rerun continues. The table gives each number with its
95% bootstrap interval and says which intervals overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("revision", "ai", "west-of-n", "rlcd")


def sh(*args: str, done: Path, log) -> float:
    if done.exists():
        log(f"skip (done): {' '.join(args)}")
        return 0.0
    t0 = time.perf_counter()
    log(f"run: {' '.join(args)}")
    res = subprocess.run([sys.executable, "-m", "rlaif", *args], cwd=ROOT, env={**os.environ, "RLAIF_REPORT": "0"},
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(args)}\n{res.stderr[-4000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--eval-limit", type=int, default=8)
    ap.add_argument("--out", default="runs/pair-sources")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "pair-sources.md"))
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                    help="which sources to train and evaluate (ai is generated anyway: the reward model of west-of-n learns from it)")
    ap.add_argument("--phase", choices=("data", "all", "table"), default="all",
                    help="data: only the generate runs and the reward model (a shorter first sitting); all: everything; "
                         "table: only write the table from what the runs folder holds (steps not run are said so)")
    args = ap.parse_args()
    out = Path(args.out)
    log = lambda m: print(time.strftime("%H:%M:%S"), m, flush=True)  # noqa: E731
    prompts = str(ROOT / "prompts" / "rlaif-prompts.jsonl")
    # a 1 GiB KV cache: the default share of this host's memory (8+ GiB) was killed by the kernel's OOM killer
    # on the shared 24 GiB machine
    common = ["--prompts", prompts, "--limit", str(args.limit), "--quiet", "--kv-cache-gib", "1"]
    secs: dict[str, float] = {}
    if args.phase == "table":
        return write(out, args, secs)
    if "revision" in args.sources:
        secs["gen revision"] = sh("generate", *common, "--rounds", "1", "--out", str(out / "revision"),
                                  done=out / "revision" / "manifest.json", log=log)
    secs["gen ai"] = sh("generate", *common, "--rounds", "1", "--label", "--out", str(out / "ai"), done=out / "ai" / "manifest.json", log=log)
    secs["train rm"] = sh("train", "rm", "--config", "configs/rm-demo.yaml", f"data={out / 'ai'}", "name=rm", f"runs_dir={out}",
                          done=out / "rm" / "final" / "config.json", log=log)
    if "west-of-n" in args.sources:
        secs["gen west-of-n"] = sh("generate", *common, "--samples", "4", "--rounds", "0", "--pairs", "west-of-n", "--reward-model",
                                   str(out / "rm" / "final"), "--label", "--out", str(out / "west-of-n"),
                                   done=out / "west-of-n" / "manifest.json", log=log)
    if "rlcd" in args.sources:
        secs["gen rlcd"] = sh("generate", *common, "--rounds", "0", "--pairs", "rlcd", "--label", "--out", str(out / "rlcd"),
                              done=out / "rlcd" / "manifest.json", log=log)
    if args.phase == "data":
        return
    for src in args.sources:
        secs[f"dpo {src}"] = sh("train", "dpo", "--config", "configs/dpo-demo.yaml", f"data={out / src}", f"name=dpo-{src}",
                                f"runs_dir={out}", done=out / f"dpo-{src}" / "final" / "config.json", log=log)
        secs[f"eval {src}"] = sh("eval", "--policy", str(out / f"dpo-{src}" / "final"), "--baseline", "default",
                                 "--limit", str(args.eval_limit), "--max-tokens", "128", "--out", str(out / f"eval-{src}"), "--quiet", "--kv-cache-gib", "1",
                                 done=out / f"eval-{src}" / "eval.json", log=log)
    write(out, args, secs)


def write(out: Path, args, secs: dict) -> None:
    rows = {}
    for src in args.sources:
        if not (out / src / "manifest.json").exists():
            continue
        m = json.loads((out / src / "manifest.json").read_text())
        done = (out / f"eval-{src}" / "eval.json").exists()
        r = json.loads((out / f"eval-{src}" / "eval.json").read_text()) if done else {}
        rows[src] = {"pairs": m["counts"]["preference_rows"], "check": m.get("pair_check"), "evaluated": done,
                     "agreement_ai": _ai_check(m), "gen_s": (m.get("timing") or {}).get("generation_wall_s"),
                     **({"win": r["win_rate"]["overall"], "soft": r["win_rate"]["soft"], "kl": r["kl"],
                         "harmless": r["harmlessness"]["policy"], "overrefusal": r["over_refusal"]["policy"]} if done else {})}
    text = table(rows, args, secs)
    print(text)
    Path(args.save).write_text(text + "\n")


def _ai_check(m: dict) -> str | None:
    """For the ai source: how its judge's labels look (order consistency), from the run's diagnostics."""
    d = m.get("diagnostics") or {}
    return None if not d else f"orders agree {100 * d['order_consistency']:.0f}%" if d.get("order_consistency") is not None else None


def ci(x, pct=True) -> str:
    if not x or x.get("mean") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3g}")
    return f"{f(x['mean'])} [{f(x['lo'])}, {f(x['hi'])}]"


def overlaps(rows: dict, key: str) -> list[str]:
    out = []
    names = [s for s in rows if rows[s][key] and rows[s][key].get("lo") is not None]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = rows[a][key], rows[b][key]
            out.append(f"{a} / {b}: {'overlap' if x['lo'] <= y['hi'] and y['lo'] <= x['hi'] else 'do not overlap'}")
    return out


def table(rows: dict, args, secs: dict) -> str:
    lines = [f"DPO (configs/dpo-demo.yaml) on each source's pairs from the first {args.limit} shipped prompts; `rlaif eval` of "
             f"each model against the default model on {args.eval_limit} prompts of each shipped set (128 tokens; judge: the "
             "default model). 95% intervals over prompts, as `rlaif eval` computes them (win rate: Clopper-Pearson with a tie as half a "
             "win; soft win rate: betting interval; harmless and over-refusal rates: Clopper-Pearson; KL: bootstrap-t). "
             "2-core CPU, shared with other work.", "",
             "| source | pairs | judge agrees with the construction | win rate vs default | soft win rate | harmless (rated safe) "
             "| over-refusal | KL(policy \\|\\| default) nats/answer |", "|---|---|---|---|---|---|---|---|"]
    from rlaif.pipeline.intervals import clopper_pearson

    for src, r in rows.items():
        c = r["check"]
        agree = "-"
        if c and c.get("agreement") is not None:
            cp = clopper_pearson(c["agree"], c["judged"])
            agree = f"{100 * c['agreement']:.0f}% of {c['judged']} [{100 * cp['lo']:.0f}%, {100 * cp['hi']:.0f}%]"
        if not r["evaluated"]:
            lines.append(f"| {src} | {r['pairs']} | {agree} | not run | not run | not run | not run | not run |")
            continue
        lines.append(f"| {src} | {r['pairs']} | {agree} | {ci(r['win'])} | {ci(r['soft'])} | {ci(r['harmless'])} "
                     f"| {ci(r['overrefusal'])} | {ci(r['kl'], False)} |")
    missing = [s for s in args.sources if s not in rows or not rows[s]["evaluated"]]
    if missing:
        lines += ["", f"Not run yet: {', '.join(f'`{m}`' for m in missing)} (DPO and eval; a source absent from the table "
                  "also its generate run). Running the same command again continues from the steps already done: "
                  f"`python benchmarks/bench_pair_sources.py --limit {args.limit} --eval-limit {args.eval_limit} --sources "
                  f"{' '.join(args.sources)}`."]
    done = {k: v for k, v in rows.items() if v["evaluated"]}
    if len(done) > 1:
        lines += ["", "Win-rate intervals: " + "; ".join(overlaps(done, "win")) + ".",
                  "KL intervals: " + "; ".join(overlaps(done, "kl")) + "."]
    gen = {k: v["gen_s"] for k, v in rows.items() if v.get("gen_s")}
    lines += ["", "Generation seconds per run (engine time, from the manifests): " + ", ".join(f"{k} {v:.0f}" for k, v in gen.items()) + "."]
    if any(secs.values()):
        lines.append("Seconds per step of this sitting: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if v) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
