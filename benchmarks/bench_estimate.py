"""How far ``--estimate`` from a 12-prompt pilot lands from a full 48-prompt run, on the default model.

    python benchmarks/bench_estimate.py [--prompts 48] [--pilot 12] [--save PATH.md]

Both runs are ``rlaif generate --label`` (one critique-and-revision round, the demo's settings) on the
first 48 shipped prompts with the in-process vLLM engine. The "full run" is the same command with a
pilot of all 48 prompts: every request of the whole run, metered, whose totals are exact (its table
says "(exact)"), and whose wall time is the run's engine time on this machine. Each figure's error is
(projected - actual) / actual; the table says whether the actual value lies in the 95% interval.
The machine is shared, so wall time depends on what else ran meanwhile.

``--command label`` measures ``rlaif label`` on the shipped reference pairs instead (12 of 48 pairs):
scoring requests only, a fraction of the time of a generate run on this CPU.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUM = r"([\d,.]+(?:e[-+]?\d+)?)"


def run(n_prompts: int, pilot: int, max_tokens: int | None, command: str = "generate") -> tuple[str, float]:
    unused = str(Path(tempfile.gettempdir()) / "rlaif-bench-estimate-unused")
    if command == "label":
        cmd = [sys.executable, "-m", "rlaif", "label", "--pairs", str(ROOT / "prompts" / "reference-pairs.jsonl"),
               "--limit", str(n_prompts), "--out", unused, "--estimate", "--estimate-pilot", str(pilot), "--quiet", "--kv-cache-gib", "1"]
    else:
        cap = [f"--{stage}-max-tokens={max_tokens}" for stage in ("response", "critique", "revision")] if max_tokens else []
        cmd = [sys.executable, "-m", "rlaif", "generate", "--prompts", str(ROOT / "prompts" / "rlaif-prompts.jsonl"),
               "--limit", str(n_prompts), "--rounds", "1", "--label", "--out", unused,
               "--estimate", "--estimate-pilot", str(pilot), "--quiet", *cap]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "RLAIF_REPORT": "0"})
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return res.stdout, time.perf_counter() - t0


def parse(out: str) -> dict[str, tuple[float, float, float]]:
    """figure -> (value, lo, hi) from the table ``--estimate`` prints."""
    cell = re.compile(rf"{NUM} (?:\(exact\)|\[{NUM}, {NUM}\])")
    f = lambda m, lo, hi: tuple(float(x.replace(",", "")) for x in (m, lo or m, hi or m))  # noqa: E731
    got = {}
    for line in out.splitlines():
        cells = cell.findall(line)
        if len(cells) == 3 and not line.startswith("wall"):
            stage = line[:16].strip()
            for name, c in zip(("requests", "prompt tokens", "output tokens"), cells):
                got[f"{stage}: {name}"] = f(*c)
        elif line.startswith("wall time"):
            got["wall time (s)"] = f(*cells[0])
            got["start-up (s)"] = (float(re.search(r"start-up ([\d.]+) s", line).group(1)),) * 3
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--pilot", type=int, default=12)
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "estimate.md"))
    ap.add_argument("--max-tokens", type=int, help="cap on each stage's tokens (default: the stages' own defaults)")
    ap.add_argument("--command", choices=("generate", "label"), default="generate",
                    help="label: `rlaif label` on the shipped reference pairs instead (scoring requests only; much shorter)")
    args = ap.parse_args()
    pilot_out, pilot_s = run(args.prompts, args.pilot, args.max_tokens, args.command)
    print(pilot_out, flush=True)  # kept in the log whatever happens to the full run
    full_out, full_s = run(args.prompts, args.prompts, args.max_tokens, args.command)
    est, actual = parse(pilot_out), parse(full_out)
    cap = f" --{{response,critique,revision}}-max-tokens {args.max_tokens}" if args.max_tokens else ""
    what = (f"`rlaif label` (ensemble 4, both orders) on the first {args.prompts} shipped reference pairs" if args.command == "label"
            else f"`rlaif generate --label --rounds 1{cap}` on the first {args.prompts} shipped prompts")
    lines = [f"{what}, default model, in-process vLLM "
             f"(2-core CPU, shared). Projection from a {args.pilot}-item pilot (`--estimate --estimate-pilot {args.pilot}`, "
             f"{pilot_s:.0f} s in all) against the metered full run (`--estimate-pilot {args.prompts}`, exact totals, {full_s:.0f} s).", "",
             "| figure | projected [95% interval] | actual | error | in the interval |", "|---|---|---|---|---|"]
    for key, (v, lo, hi) in est.items():
        a = actual.get(key, (float("nan"),))[0]
        err = (v - a) / a if a else float("nan")
        inside = "yes" if lo <= a <= hi else "no"
        lines.append(f"| {key} | {v:,.1f} [{lo:,.1f}, {hi:,.1f}] | {a:,.1f} | {err:+.1%} | {inside} |")
    lines += ["", "The pilot's table:", "", "```", pilot_out.strip(), "```", "", "The full run's:", "", "```", full_out.strip(), "```"]
    text = "\n".join(lines)
    print(text)
    Path(args.save).write_text(text + "\n")


if __name__ == "__main__":
    main()
