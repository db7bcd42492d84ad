"""rlaif review on a large run: how long a 10,000-pair run takes to open, and how long one
rating takes to be stored (posted, checked, appended, fsynced, acknowledged).

Goals (issue 12): open in under 2 s, store a rating in under 100 ms. Each is printed next
to a baseline measured in the same run on the same files:

- opening: the bare ``json.loads`` of every line of preferences.jsonl and reviews.jsonl
  (what any reader must do) vs. the server's start (load pairs, read the ratings, bind,
  start uvicorn) plus the first page over HTTP; and the whole command as a user runs it
  (``python -m rlaif review`` from a cold process until the first page has arrived);
- a rating: one fsynced append of the same line to a file (``os.write`` + ``os.fsync``) vs.
  one ``POST /api/rate`` over a kept-alive HTTP connection, answered after the fsync; and
  the statistics the page fetches after each rating (``GET /stats``).

    python benchmarks/bench_review.py [--pairs 10000] [--ratings 10000] [--posts 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the of and to a in is it you that for on with as are this be can your at or not have from "
         "answer question model response safe help people data water energy code python time days").split()
CATEGORIES = ("harmful", "benign-sensitive", "helpful", "honesty", "refusal-check")
PRINCIPLES = [f"principle-{i:02d}" for i in range(20)]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def make_run(path: Path, pairs: int, ratings: int, seed: int = 0) -> None:
    """A run folder shaped like rlaif generate --label output: ~100-word prompts, ~150-word responses."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "preferences.jsonl", "w", encoding="utf-8") as fh:
        for i in range(pairs):
            probs = [rng.random() for _ in range(3)]
            p = 0.5 + rng.random() / 2
            fh.write(json.dumps({
                "prompt": [{"role": "user", "content": text(rng, 100)}],
                "chosen": [{"role": "assistant", "content": text(rng, 150)}],
                "rejected": [{"role": "assistant", "content": text(rng, 150)}],
                "chosen_prob": p, "margin": 1.0, "likert": 6, "order_agreement": rng.choice([0.0, 1 / 3, 2 / 3, 1.0]),
                "label_principles": rng.sample(PRINCIPLES, 3), "label_principle_probs": probs, "flags": [],
                "label_source": "ai", "id": f"p{i:05d}#0:initial~final", "category": rng.choice(CATEGORIES),
            }) + "\n")
    from rlaif.review.data import Review, left_is_chosen, to_chosen_likert

    with open(path / "reviews.jsonl", "w", encoding="utf-8") as fh:
        for k in range(ratings):
            pid = f"p{rng.randrange(pairs):05d}#0:initial~final"
            who = rng.choice(["ann", "ben", "cy"])
            shown = rng.randint(1, 8)
            lc = left_is_chosen(pid, who)
            r = Review(f"bench-{k:08d}", who, "2025-01-01T00:00:00.000+00:00", pid, shown,
                       "chosen" if lc else "rejected", to_chosen_likert(shown, lc), (), ("wrong",) if k % 7 == 0 else (), "")
            fh.write(json.dumps(r.to_row(), separators=(",", ":")) + "\n")


def bare_parse(run: Path) -> float:
    t = time.perf_counter()
    for name in ("preferences.jsonl", "reviews.jsonl"):
        for line in (run / name).read_bytes().split(b"\n"):
            if line:
                json.loads(line)
    return time.perf_counter() - t


def open_in_process(run: Path):
    """Wall seconds and CPU seconds (all threads of this process: the client's share is small)."""
    import httpx

    from rlaif.review.app import create_app
    from rlaif.review.server import BackgroundServer

    t, c = time.perf_counter(), time.process_time()
    app = create_app(run, log=lambda m: None)
    server = BackgroundServer(app).start()
    page = httpx.get(server.url + "?reviewer=ann", follow_redirects=True)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    assert page.status_code == 200 and "pair " in page.text, page.status_code
    return (elapsed, cpu), server, app


def open_cold_cli(run: Path) -> tuple[float, float]:
    """``python -m rlaif review RUN`` from a new process until the first page has arrived:
    wall seconds, and the CPU seconds the server process had used by then (from /proc)."""
    import httpx

    tick = os.sysconf("SC_CLK_TCK")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "review", str(run), "--port", "0", "--reviewer", "ann"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            m = re.search(r"review at (\S+)", line)
            if m:
                page = httpx.get(m.group(1), follow_redirects=True)
                elapsed = time.perf_counter() - t
                assert page.status_code == 200
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                return elapsed, cpu
        raise RuntimeError("rlaif review printed no URL")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fsync_append_baseline(directory: Path, n: int, line: bytes) -> list[float]:
    path = directory / "baseline.jsonl"
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, line)
        os.fsync(fd)
        os.close(fd)
        times.append(time.perf_counter() - t)
    return times


def posts(server, app, n: int, pairs: int) -> tuple[list[float], list[float]]:
    import httpx

    token = app.state.review.token
    rng = random.Random(1)
    post_times, stats_times = [], []
    with httpx.Client(base_url=server.url) as client:
        for k in range(n):
            body = {"token": token, "submission_id": f"post-{k:08d}", "pair_id": f"p{rng.randrange(pairs):05d}#0:initial~final",
                    "reviewer": "dee", "rating": rng.randint(1, 8), "flags_left": ["harmful"] if k % 5 == 0 else [],
                    "flags_right": [], "comment": "a short note" if k % 3 == 0 else ""}
            t = time.perf_counter()
            r = client.post("/api/rate", json=body)
            post_times.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
            t = time.perf_counter()
            s = client.get("/stats")
            stats_times.append(time.perf_counter() - t)
            assert s.status_code == 200
    return post_times, stats_times


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--ratings", type=int, default=10_000, help="ratings already in reviews.jsonl")
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5, help="openings measured of each kind")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "big-run"
        make_run(run, args.pairs, args.ratings)
        size = (run / "preferences.jsonl").stat().st_size / 2**20
        print(f"run: {args.pairs} pairs ({size:.1f} MiB preferences.jsonl), {args.ratings} ratings in reviews.jsonl")
        print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start\n")

        base = [bare_parse(run) for _ in range(args.repeats)]
        opened = []
        for _ in range(args.repeats):
            measured, server, app = open_in_process(run)
            opened.append(measured)
            server.stop()
        cold = [open_cold_cli(run) for _ in range(args.repeats)]
        med = statistics.median
        ow, oc = [w for w, _ in opened], [c for _, c in opened]
        cw, cc = [w for w, _ in cold], [c for _, c in cold]
        print(f"opening (goal < 2 s), {args.repeats} times each: wall median (best - worst); CPU time median")
        print(f"  baseline: json.loads of every line         {med(base):7.3f} s  ({min(base):.3f} - {max(base):.3f})")
        print(f"  server start + first page, in process      {med(ow):7.3f} s  ({min(ow):.3f} - {max(ow):.3f})  "
              f"{med(ow) / med(base):.2f}x the baseline; CPU {med(oc):.3f} s")
        print(f"  python -m rlaif review, cold, first page   {med(cw):7.3f} s  ({min(cw):.3f} - {max(cw):.3f})  "
              f"CPU {med(cc):.3f} s (imports, load, first page)")

        _, server, app = open_in_process(run)
        try:
            example = json.dumps({"submission_id": "x" * 16, "reviewer": "dee", "pair_id": "p00001#0:initial~final"}).encode() * 3 + b"\n"
            fs = fsync_append_baseline(Path(tmp), args.posts, example)
            post_times, stats_times = posts(server, app, args.posts, args.pairs)
        finally:
            server.stop()
        ms = 1000
        print(f"\na rating stored (goal < 100 ms), {args.posts} posts, {args.ratings}-{args.ratings + args.posts} ratings in the file")
        print(f"  baseline: append + fsync of one line       median {statistics.median(fs) * ms:6.2f} ms  p95 {pct(fs, .95) * ms:6.2f}  max {max(fs) * ms:6.2f}")
        print(f"  POST /api/rate (checked, fsynced, answered) median {statistics.median(post_times) * ms:6.2f} ms  "
              f"p95 {pct(post_times, .95) * ms:6.2f}  max {max(post_times) * ms:6.2f}   "
              f"{statistics.median(post_times) / statistics.median(fs):.2f}x the baseline (median)")
        print(f"  GET /stats after it (all numbers again)    median {statistics.median(stats_times) * ms:6.2f} ms  "
              f"p95 {pct(stats_times, .95) * ms:6.2f}  max {max(stats_times) * ms:6.2f}")


if __name__ == "__main__":
    main()
