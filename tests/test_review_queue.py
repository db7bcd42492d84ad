"""The review queue: informative pairs first, a random stratum for the estimates. Simulated
sessions check that the pairs whose orders disagreed come first while the random stratum's
agreement estimate stays unbiased (and the all-ratings number does not); scripted reviewers
drive the real HTTP API for the order, the interval, the ratings still needed and the stop banner."""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")

from oracles import MARKER  # noqa: E402
from scripted_review import Reviewer, prefer_marked  # noqa: E402
from rlaif.review.app import create_app  # noqa: E402
from rlaif.review.data import Pair, Review  # noqa: E402
from rlaif.review.queue import RANDOM_SHARE, ReviewQueue, in_random_stratum, stratum_draw  # noqa: E402
from rlaif.review.server import BackgroundServer  # noqa: E402
from rlaif.review.stats import LiveStats  # noqa: E402
from rlaif.stats_intervals import wilson  # noqa: E402


def _pair(i, pid, hard, category="c", principles=("x",), chosen="chosen text", rejected="other text", p=None):
    p = p if p is not None else 0.55 if hard else 0.92
    return Pair(i, pid, ({"role": "user", "content": "q"},), chosen, rejected, p, False, category,
                tuple(principles), tuple(p for _ in principles), 0.0 if hard else 1.0, "ai")


def _review(reviewer, pid, agrees, k):
    likert = 8 if agrees else 1
    return Review(f"{reviewer}-{k:08d}", reviewer, f"2024-01-01T00:00:{k:06d}", pid, 9 - likert, "chosen", likert)


def test_random_stratum_is_half_the_pairs_fixed_by_id():
    ids = [f"p{i}" for i in range(4000)]
    share = sum(in_random_stratum(i) for i in ids) / len(ids)
    assert abs(share - RANDOM_SHARE) < 0.03
    assert [in_random_stratum(i) for i in ids] == [stratum_draw(i) < RANDOM_SHARE for i in ids]
    draws = sorted(stratum_draw(i) for i in ids)  # uniform: the quartiles near 0.25, 0.5, 0.75
    assert all(abs(draws[int(q * 4000)] - q) < 0.03 for q in (0.25, 0.5, 0.75))


def simulate(seed: int, n_pairs: int = 120, n_ratings: int = 40):
    """One session: 30% of the pairs are hard (orders disagreed, people agree with the AI half the
    time), the others easy (people agree 90%). The hard pairs' P (0.8) is further from 0.5 than
    that of some easy ones (0.6 or 0.95), so only the order-agreement rule puts them first.
    Returns the random stratum's estimate, the all-ratings agreement, the population's agreement,
    the hard flags of the informative picks, and the number of hard pairs outside the random stratum."""
    rng = random.Random(seed)
    pairs, agree_p = [], []
    for i in range(n_pairs):
        hard = rng.random() < 0.3
        pairs.append(_pair(i, f"s{seed}-{i}", hard, category=rng.choice("ab"), p=0.8 if hard else rng.choice((0.6, 0.95))))
        agree_p.append(0.5 if hard else 0.9)
    queue, live = ReviewQueue(pairs), LiveStats({p.id: p for p in pairs})
    informative_hard = []
    for k in range(n_ratings):
        i = queue.next("sim")
        if queue.stream_of(i) == "informative":
            informative_hard.append(pairs[i].order_agreement == 0.0)
        r = _review("sim", pairs[i].id, rng.random() < agree_p[i], k)
        queue.update(r)
        live.update(r)
    snap = live.snapshot()
    hard_informative = sum(p.order_agreement == 0.0 and not in_random_stratum(p.id) for p in pairs)
    return snap["random"]["overall"]["rate"], snap["agreement"]["overall"]["rate"], statistics.mean(agree_p), informative_hard, hard_informative


def test_queue_puts_disagreeing_orders_first_and_the_random_estimate_stays_unbiased():
    random_err, naive_err = [], []
    for seed in range(100):
        est, naive, truth, informative_hard, n_hard = simulate(seed)
        # the informative picks: every pair whose orders disagreed before any other
        first = min(n_hard, len(informative_hard))
        assert all(informative_hard[:first]) and not any(informative_hard[first:])
        random_err.append(est - truth)
        naive_err.append(naive - truth)
    se = statistics.stdev(random_err) / len(random_err) ** 0.5
    assert abs(statistics.mean(random_err)) < 3 * se, (statistics.mean(random_err), se)
    assert statistics.mean(naive_err) < -0.08  # all ratings over-represent the hard pairs: biased low


def test_queue_alternates_streams_and_spreads_over_principles_categories_and_length():
    pairs = []
    for i in range(80):  # pairs whose longer response was chosen are a little less sure: without the balance, they would all come first
        long_chosen = i % 2 == 0
        pairs.append(_pair(i, f"q{i}", False, chosen="x" * (40 if long_chosen else 10), rejected="y" * (10 if long_chosen else 40),
                           p=0.90 if long_chosen else 0.92))
    queue = ReviewQueue(pairs)
    streams, picked = [], []
    for k in range(20):
        i = queue.next("ann")
        streams.append(queue.stream_of(i))
        picked.append(i)
        queue.update(_review("ann", pairs[i].id, True, k))
    assert streams[:2] == ["informative", "random"] and streams.count("informative") == 10
    longer = [len(pairs[i].chosen) > len(pairs[i].rejected) for i in picked]
    for k in range(2, 21, 2):  # the informative picks keep the two length strata of all ratings in balance
        assert abs(2 * sum(longer[:k]) - k) <= 2
    assert len(set(picked)) == 20  # nothing offered twice
    assert queue.next("ben") not in picked  # a second reviewer gets the pairs nobody rated first

    # scarcity: the principles and categories with the fewest ratings come first (all else equal)
    pairs = [_pair(i, f"r{i}", False, category="rare" if i % 10 == 9 else "common", principles=("p2",) if i % 10 == 7 else ("p1",))
             for i in range(60)]
    queue = ReviewQueue(pairs)
    info = []
    for k in range(12):
        i = queue.next("ann")
        if queue.stream_of(i) == "informative":
            info.append(pairs[i])
        queue.update(_review("ann", pairs[i].id, True, k))
    firsts = [(p.category, p.principles) for p in info[:3]]
    assert ("rare", ("p1",)) in firsts and ("common", ("p2",)) in firsts


def _row(pid, chosen, rejected, hard, category="c"):
    p = 0.55 if hard else 0.9
    return {"id": pid, "prompt": [{"role": "user", "content": f"question {pid}"}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "label_source": "ai", "chosen_prob": p,
            "order_agreement": 0.0 if hard else 1.0, "label_principles": ["x", "y"], "label_principle_probs": [p, 1 - p if hard else p],
            "category": category}


def queue_run(path: Path, n: int = 60) -> Path:
    """Pairs whose better response holds the marker; the AI is right on every easy pair and on
    every other hard one (orders disagreed)."""
    rows = []
    for i in range(n):
        hard = i % 4 == 0
        good, bad = f"{MARKER} good answer {i}", f"weak answer {i:03d}...."
        ai_right = not hard or i % 8 == 0
        rows.append(_row(f"h{i}", good if ai_right else bad, bad if ai_right else good, hard))
    path.mkdir(parents=True)
    (path / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scripted_reviewers_over_http_follow_the_queue_and_see_the_estimate(tmp_path):
    run = queue_run(tmp_path / "run")
    hard = {f"h{i}" for i in range(60) if i % 4 == 0}
    with BackgroundServer(create_app(run, log=lambda m: None, target=0.2)) as server:
        ann = Reviewer(server.url, "ann", prefer_marked(0.0), seed=1)
        ann.rate(24)
        informative = [pid for pid in ann.seen if not in_random_stratum(pid)]
        random_seen = [pid for pid in ann.seen if in_random_stratum(pid)]
        assert len(informative) == 12 and len(random_seen) == 12 and not in_random_stratum(ann.seen[0])
        n_hard = sum(1 for pid in hard if not in_random_stratum(pid))
        assert set(informative[:n_hard]) <= hard and not set(informative[n_hard:]) & hard
        stats = httpx.get(server.url + "api/stats").json()
        g = stats["progress"]
        # the estimate from the random stratum only, worked out from what ann said
        agree = sum((MARKER in ann.chose[pid]) == (MARKER in _chosen(run, pid)) for pid in random_seen)
        assert (g["n"], g["rate"]) == (12, agree / 12)
        assert (g["lo"], g["hi"]) == pytest.approx(wilson(agree, 12))
        assert g["met"] == ((g["hi"] - g["lo"]) / 2 <= 0.2)
        page = httpx.get(server.url + "stats").text
        assert ('id="stop-banner"' in page) == g["met"]
        if not g["met"]:
            assert re.search(r'id="estimate-more">%d<' % g["more"], page) and g["more"] >= 1
        # all ratings include the informative (hard) pairs: the all-ratings number is lower
        assert stats["agreement"]["overall"]["rate"] < g["rate"]
        # /prev walks back through what this reviewer rated, newest first
        with httpx.Client(base_url=server.url, follow_redirects=False) as c:
            c.get("/?reviewer=ann")
            last = _index(run, ann.seen[-1])
            back = c.get(f"/prev?before={last}").headers["location"]
            assert back == f"/pair/{_index(run, ann.seen[-2])}"
            # a pair left unrated with n is passed over for the rest of the session
            offered = c.get(f"/next?after={last}").headers["location"]
            skipped = int(offered.rsplit("/", 1)[1])
            again = c.get(f"/next?after={skipped}").headers["location"]
            later = [c.get(f"/next?after={int(again.rsplit('/', 1)[1])}").headers["location"] for _ in range(3)]
            assert offered != again and offered not in later


def test_stop_banner_once_the_interval_is_narrow_enough(tmp_path):
    run = queue_run(tmp_path / "run", n=40)
    with BackgroundServer(create_app(run, log=lambda m: None, target=0.3)) as server:
        ann = Reviewer(server.url, "ann", prefer_marked(0.0), seed=1)
        ann.rate(2)
        g = httpx.get(server.url + "api/stats").json()["progress"]
        assert not g["met"] and g["more"] >= 1 and 'id="stop-banner"' not in httpx.get(server.url + "stats").text
        ann.rate(12)
        g = httpx.get(server.url + "api/stats").json()["progress"]
        # 7 ratings of random pairs; the Wilson interval of 7 of 7 is 64.6%-100%: within +-30 points
        assert g["met"] and g["more"] == 0 and "Enough ratings" in httpx.get(server.url + "stats").text


def _chosen(run: Path, pid: str) -> str:
    for line in (run / "preferences.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["id"] == pid:
            return row["chosen"][0]["content"]
    raise KeyError(pid)


def _index(run: Path, pid: str) -> int:
    ids = [json.loads(x)["id"] for x in (run / "preferences.jsonl").read_text().splitlines() if x]
    return ids.index(pid)


def test_review_command_takes_order_and_target(tmp_path, monkeypatch, capsys):
    import rlaif.review.server
    from rlaif.cli import main

    run = queue_run(tmp_path / "run", n=8)
    served = []
    monkeypatch.setattr(rlaif.review.server, "serve", lambda app, sock: served.append(app.state.review))
    assert main(["review", str(run), "--port", "0", "--order", "file", "--target", "20"]) == 0
    out = capsys.readouterr().out
    assert "order: file; the page says when the agreement's 95% interval is within +-20 points" in out
    assert served[0].order == "file" and served[0].target == pytest.approx(0.2)
    assert main(["review", str(run), "--port", "0"]) == 0 and served[1].order == "queue" and served[1].target == pytest.approx(0.1)
    assert main(["review", str(run), "--port", "0", "--target", "0"]) == 2
    assert "--target must be between 0 and 50" in capsys.readouterr().err
    import gc

    gc.unfreeze()  # rlaif review freezes what it loaded (it lives as long as the server): not in this test process
