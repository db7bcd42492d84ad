"""rlaif try's edit-and-look cycle: how long one ``rlaif try`` takes when it has to start the
warm engine server (the model loads), when it finds the server running, and with
``--no-server`` (the model loads in the command's own process every time).

Each call is the whole command as a user runs it (a fresh ``python -m rlaif try`` process,
Python start-up and imports included), timed from outside; the command's own line splits it
into "engine ready after" and "tried in". Between the warm calls the principle file is edited
(one word of its critique request, then put back), as in a real edit-and-look cycle; the edits go
to a copy of principles/ and constitution/ in a temporary folder, never to the checkout.

    python benchmarks/bench_try.py [--principle no-sycophancy] [-n 8] [--warm-calls 2] [--out benchmarks/results/try.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_call(args: list[str], env: dict[str, str]) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rlaif", "try", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rlaif try {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"tried in ([\d.]+) s \(engine ready after ([\d.]+) s", proc.stdout)
    summary = re.search(r"working copy\s+([\d.]+)\s+(\d+/\d+)\s+(\d+/\d+)", proc.stdout)
    return {"wall_s": round(wall, 1), "engine_ready_s": float(m.group(2)), "tried_s": float(m.group(1)),
            "started": "started the warm engine server" in proc.stdout,
            "reused": "reused the warm engine server" in proc.stdout,
            "mean_p_revision": float(summary.group(1)) if summary else None, "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--principle", default="no-sycophancy")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--warm-calls", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "try.md"))
    args = ap.parse_args()
    env = {**os.environ, "COLUMNS": "200", "RLAIF_REPORT": "0"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-try-") as tmp:
        state = str(Path(tmp) / "state")
        shutil.copytree(ROOT / "principles", Path(tmp) / "principles")
        shutil.copytree(ROOT / "constitution", Path(tmp) / "constitution")
        pfile = Path(tmp) / "principles" / f"{args.principle}.yaml"
        original = pfile.read_bytes()
        common = [args.principle, "-n", str(args.n), "--state-dir", state,
                  "--constitution", str(Path(tmp) / "constitution" / "default.yaml")]
        try:
            rows.append(("first call: starts the warm server", one_call(common, env)))
            for i in range(args.warm_calls):
                # the edit of an edit-and-look cycle: one word of the critique request, then back
                text = original.decode()
                pfile.write_text(text.replace("Point out", "Say", 1) if i % 2 == 0 else text)
                rows.append((f"call {i + 2}: file edited, warm server reused", one_call(common, env)))
        finally:
            pfile.write_bytes(original)
            subprocess.run([sys.executable, "-m", "rlaif", "try", "--stop", "--state-dir", state], cwd=ROOT, env=env)
        rows.append(("--no-server: the model loads in the command", one_call([*common, "--no-server"], env)))
    lines = [
        "# rlaif try: the edit-and-look cycle",
        "",
        f"`python benchmarks/bench_try.py -n {args.n} --warm-calls {args.warm_calls}`: `rlaif try {args.principle}` on its "
        f"{args.n} default prompts (one round, the constitution's token limits), default model (SmolLM2-135M-Instruct) on "
        "in-process vLLM (CPU build, eager), this 2-core CPU machine, other jobs running alongside (load average in the table). "
        "Wall time is the whole command from outside (a fresh Python process).",
        "",
        "| call | wall | engine ready after | critique, revision and judge | mean P(revision better) | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['wall_s']:.1f} s | {r['engine_ready_s']:.1f} s | {r['tried_s']:.1f} s | "
                     f"{r['mean_p_revision']} | {r['load1']} |")
    lines += ["", "```json", json.dumps([{"call": n, **r} for n, r in rows], indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
