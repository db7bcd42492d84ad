"""rlaif review without a browser: blind order, orientation, the ratings store, the numbers
(checked against values worked out by hand in the docstrings), the HTTP checks, the CLI.
The page itself is driven in a real browser in test_review_browser.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing package is a failure, not a skip
    pytest.importorskip("starlette")
    pytest.importorskip("jinja2")
    pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from rlaif.review.app import create_app  # noqa: E402
from rlaif.review.data import (  # noqa: E402
    Pair, Review, ReviewError, ReviewStore, left_is_chosen, load_pairs, parse_submission, to_chosen_likert,
)
from rlaif.review.stats import LiveStats, compute_stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def row(pid, chosen="good answer", rejected="bad answer", prompt="a question", **label):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "id": pid, **label}


def make_run(path: Path, rows) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "preferences.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def shown_for(prefer_chosen: bool, left_chosen: bool, strong: bool = True) -> int:
    """The rating a person gives on the page (1 = left much better ... 8 = right much better)."""
    left_better = prefer_chosen == left_chosen
    return (1 if strong else 3) if left_better else (8 if strong else 6)


# ------------------------------------------------------------------ orientation


def test_blind_order_is_fixed_per_reviewer_and_pair_and_mixed():
    ids = [f"p{i}" for i in range(400)]
    alice = [left_is_chosen(i, "alice") for i in ids]
    assert alice == [left_is_chosen(i, "alice") for i in ids]  # a reload shows the same order
    assert 140 <= sum(alice) <= 260  # about half the pairs show the chosen response on the left
    bob = [left_is_chosen(i, "bob") for i in ids]
    assert 100 <= sum(a != b for a, b in zip(alice, bob)) <= 300  # another reviewer, another order


def test_rating_shown_is_stored_in_chosen_orientation():
    # chosen on the left: "left much better" (1) = chosen much better (8); "right much better" (8) = 1
    assert [to_chosen_likert(k, True) for k in range(1, 9)] == [8, 7, 6, 5, 4, 3, 2, 1]
    # chosen on the right: the page's scale already points at the chosen response
    assert [to_chosen_likert(k, False) for k in range(1, 9)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_parse_submission_maps_side_flags_and_rating_back(tmp_path):
    pairs = {p.id: p for p in load_pairs(make_run(tmp_path, [row("x1"), row("x2")]))}
    for pid in pairs:
        for who in ("ann", "ben", "cy"):
            lc = left_is_chosen(pid, who)
            r = parse_submission({"submission_id": "sub-000001", "pair_id": pid, "reviewer": who, "rating": "2",
                                  "flags_left": ["harmful"], "flags_right": ["evasive", "other"], "comment": "c"}, pairs)
            # rating 2 = left better: the human prefers whichever response was on the left
            assert r.prefers_chosen is lc
            assert r.likert == (7 if lc else 2)
            assert r.left == ("chosen" if lc else "rejected")
            assert (r.flags_chosen, r.flags_rejected) == ((("harmful",), ("evasive", "other")) if lc else (("evasive", "other"), ("harmful",)))


# ------------------------------------------------------------------ numbers


def _review(reviewer, pid, likert, fc=(), fr=(), sid=None):
    return Review(sid or f"{reviewer}-{pid}-x", reviewer, "t", pid, 9 - likert, "chosen", likert, tuple(fc), tuple(fr), "")


def _pair(i, pid, chosen_prob, category, principles, probs, order, tie=False, source="ai"):
    return Pair(i, pid, ({"role": "user", "content": "q"},), "c", "r", chosen_prob, tie, category, tuple(principles),
                tuple(probs), order, source)


def test_stats_match_a_hand_computation():
    """Five pairs, two reviewers (p4 is an AI tie, p5 a revision-mode pair without probabilities).

    Observations (human prefers chosen = likert >= 5), ties left out of agreement:
      alice p1 7 yes, p2 3 no, p3 6 yes, p5 8 yes;  bob p1 2 no, p3 8 yes  -> overall 4/6
      orders agreed (p1, p3): 3/4; disagreed (p2): 0/1; unknown (p5): 1/1
      category a (p1, p2): alice yes, no; bob no -> 1/3;  b (p3, p5): 3/3
      principle x: p1 votes chosen (0.9): alice yes, bob no; p2 votes chosen (0.7): alice no -> 1/3
      principle y: p1 votes rejected (0.3): alice no, bob yes; p3 votes chosen (0.6): both yes -> 3/4
      principle z: p5 has no probabilities, its label (chosen) counts: alice yes -> 1/1
    Calibration over the 6 ratings of pairs with chosen_prob (p4's included):
      [0.5, 0.6): p2 .55 (0), p4 .50 (0) -> n 2, mean .525, rate 0
      [0.7, 0.8): p3 .72 twice (1, 1)     -> n 2, mean .72, rate 1
      [0.9, 1.0]: p1 .95 (1), (0)          -> n 2, mean .95, rate .5
      Brier = (.05^2 + .55^2 + .28^2 + .5^2 + .95^2 + .28^2) / 6 = 1.6143 / 6
    Between reviewers: p1 (7 vs 2: differ, |d| 5), p3 (6 vs 8: same, |d| 2) -> 1/2, mean |d| 3.5
    """
    pairs = [
        _pair(0, "p1", 0.95, "a", ["x", "y"], [0.9, 0.3], 1.0),
        _pair(1, "p2", 0.55, "a", ["x"], [0.7], 0.5),
        _pair(2, "p3", 0.72, "b", ["y"], [0.6], 1.0),
        _pair(3, "p4", 0.5, "b", ["x"], [0.5], 1.0, tie=True),
        _pair(4, "p5", None, "b", ["z"], [], None, source="revision"),
    ]
    reviews = [
        _review("alice", "p1", 7, fr=["wrong"]), _review("alice", "p2", 3), _review("alice", "p3", 6),
        _review("alice", "p4", 2), _review("alice", "p5", 8),
        _review("bob", "p1", 2, fc=["harmful", "evasive"]), _review("bob", "p3", 8),
    ]
    s = compute_stats({p.id: p for p in pairs}, reviews)
    cell = lambda n, a: {"n": n, "agree": a, "rate": a / n}  # noqa: E731
    assert (s["pairs"], s["reviewed_pairs"], s["ratings"]) == (5, 5, 7)
    assert s["reviewers"] == {"alice": 5, "bob": 2}
    assert s["label_sources"] == {"ai": 6, "revision": 1}
    a = s["agreement"]
    assert a["overall"] == cell(6, 4)
    assert (a["orders_agreed"], a["orders_disagreed"], a["orders_unknown"]) == (cell(4, 3), cell(1, 0), cell(1, 1))
    assert a["by_category"] == {"a": cell(3, 1), "b": cell(3, 3)}
    assert a["by_principle"] == {"x": cell(3, 1), "y": cell(4, 3), "z": cell(1, 1)}
    assert a["by_reviewer"] == {"alice": cell(4, 3), "bob": cell(2, 1)}
    assert a["ai_ties"] == 1
    bins = [(b["n"], b["mean_prob"], b["human_rate"]) for b in s["calibration"]["bins"]]
    assert bins[0] == (2, pytest.approx(0.525), 0.0)
    assert bins[1] == (0, None, None)
    assert bins[2] == (2, pytest.approx(0.72), 1.0)
    assert bins[3] == (0, None, None)
    assert bins[4] == (2, pytest.approx(0.95), 0.5)
    assert s["calibration"]["n"] == 6
    assert s["calibration"]["brier"] == pytest.approx(1.6143 / 6, rel=1e-9)
    assert s["inter_reviewer"] == {"pairs": 2, "comparisons": 2, "agreement": 0.5, "mean_abs_likert_diff": 3.5}
    assert s["flags"]["chosen"]["harmful"] == 1 and s["flags"]["chosen"]["evasive"] == 1
    assert s["flags"]["rejected"]["wrong"] == 1 and sum(s["flags"]["rejected"].values()) == 1


def test_calibration_bins_put_each_edge_in_the_bin_it_starts():
    """[0.5, 0.6) [0.6, 0.7) [0.7, 0.8) [0.8, 0.9) [0.9, 1.0]: 0.6 opens the second bin (in floating
    point 0.6 - 0.5 is just under 0.1, the trap of computing the bin by arithmetic)."""
    probs = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.59999, 0.7000001]
    pairs = {f"p{i}": _pair(i, f"p{i}", p, "c", [], [], 1.0) for i, p in enumerate(probs)}
    s = compute_stats(pairs, [_review("ann", pid, 8) for pid in pairs])
    assert [b["n"] for b in s["calibration"]["bins"]] == [2, 1, 2, 1, 2]


def test_inter_reviewer_counts_every_two_reviewers_of_a_pair():
    """Three reviewers of one pair: 3 comparisons; alice and bob agree (chosen), carol differs
    from both -> 1/3; |d| = |6-8| + |6-1| + |8-1| = 2 + 5 + 7 = 14 -> 14/3."""
    pairs = {"p": _pair(0, "p", 0.8, "c", [], [], 1.0)}
    s = compute_stats(pairs, [_review("alice", "p", 6), _review("bob", "p", 8), _review("carol", "p", 1)])
    assert s["inter_reviewer"]["comparisons"] == 3
    assert s["inter_reviewer"]["agreement"] == pytest.approx(1 / 3)
    assert s["inter_reviewer"]["mean_abs_likert_diff"] == pytest.approx(14 / 3)


def _same(a, b, path="stats"):
    """Equal, floats within 1e-9 (sums kept by adding and taking back differ in the last bits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_live_stats_equal_a_full_recount_after_every_rating():
    """The incremental numbers (ratings replaced, comparisons taken back) against compute_stats
    over the ratings that count, after each of 400 random ratings by 4 reviewers of 25 pairs."""
    import random

    rng = random.Random(7)
    pairs = {}
    for i in range(25):
        principles = rng.sample(["x", "y", "z", "w"], rng.randint(0, 3))
        probs = [rng.choice([0.2, 0.5, 0.8, rng.random()]) for _ in principles] if rng.random() < 0.7 else []
        pairs[f"p{i}"] = _pair(i, f"p{i}", rng.choice([None, 0.5, 0.6, 0.7, 0.99, 1.0, 0.5 + rng.random() / 2]),
                               rng.choice(["a", "b", "c"]), principles, probs, rng.choice([None, 0.0, 0.5, 1.0]),
                               tie=rng.random() < 0.15, source=rng.choice(["ai", "ai", "revision"]))
    live = LiveStats(pairs)
    latest = {}
    for k in range(400):
        who, pid = rng.choice(["ann", "ben", "cy", "dee"]), rng.choice(list(pairs))
        flags = [f for f in ("harmful", "wrong", "other") if rng.random() < 0.2]
        r = _review(who, pid, rng.randint(1, 8), fc=flags, fr=flags[:1], sid=f"s{k:07d}")
        live.update(r)
        latest[(who, pid)] = r
        if k % 10 == 0 or k == 399:
            _same(live.snapshot(), compute_stats(pairs, latest.values()))
    assert live.snapshot()["inter_reviewer"]["comparisons"] > 50  # the streams did exercise replacements


# ------------------------------------------------------------------ run folders and the store


def test_load_pairs_reads_real_run_folders(tmp_path):
    """The run folders the other commands write: generate --label, label, and generate without
    --label (the revision wins: no AI probability, the critique principles as principles)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gen, lab, rev = tmp_path / "gen", tmp_path / "lab", tmp_path / "rev"
    for cmd in (["generate", "--backend", "fake", "--prompts", "prompts/rlaif-prompts.jsonl", "--limit", "4", "--out", str(gen), "--label", "--quiet"],
                ["label", "--backend", "fake", "--pairs", "prompts/reference-pairs.jsonl", "--out", str(lab), "--limit", "4", "--quiet"],
                ["generate", "--backend", "fake", "--prompts", "prompts/rlaif-prompts.jsonl", "--limit", "3", "--out", str(rev), "--quiet"]):
        subprocess.run([sys.executable, "-m", "rlaif", *cmd], cwd=ROOT, env=env, check=True, capture_output=True)
    rows = [json.loads(x) for x in (rev / "preferences.jsonl").read_text().split("\n") if x]
    pairs = load_pairs(rev)
    assert [(p.id, p.chosen_prob, p.label_source, p.principles) for p in pairs] == [
        (r["id"], None, "revision", tuple(r["principle_ids"])) for r in rows]
    for run in (gen, lab):
        rows = [json.loads(x) for x in (run / "preferences.jsonl").read_text().split("\n") if x]
        pairs = load_pairs(run)
        assert [p.id for p in pairs] == [r["id"] for r in rows]
        for p, r in zip(pairs, rows):
            assert (p.chosen, p.rejected) == (r["chosen"][0]["content"], r["rejected"][0]["content"])
            assert p.chosen_prob == r["chosen_prob"] and p.principles == tuple(r["label_principles"])
            assert p.category == r["category"] and p.order_agreement == r["order_agreement"]


def test_load_pairs_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ReviewError, match="does not exist"):
        load_pairs(tmp_path / "nope")
    (tmp_path / "file.jsonl").write_text("{}\n")
    with pytest.raises(ReviewError, match="not a run folder"):
        load_pairs(tmp_path / "file.jsonl")
    (tmp_path / "half" / "chunks").mkdir(parents=True)
    with pytest.raises(ReviewError, match="no preferences.jsonl.*has not finished"):
        load_pairs(tmp_path / "half")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "preferences.jsonl").write_text('not json\n{"id": "x"}\n')
    warnings = []
    with pytest.raises(ReviewError, match="holds no preference pairs"):
        load_pairs(tmp_path / "empty", log=warnings.append)
    assert len(warnings) == 2 and "line 1" in warnings[0] and "line 2" in warnings[1]


def test_a_row_that_is_not_utf8_is_skipped_and_the_others_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = [json.dumps(row(f"g{i}", chosen="caf\u00e9")).encode() for i in range(2)]
    (run / "preferences.jsonl").write_bytes(good[0] + b"\n" + b'{"id": "bad\xff\xfe"}\n' + good[1] + b"\n")
    warnings = []
    pairs = load_pairs(run, log=warnings.append)
    assert [p.id for p in pairs] == ["g0", "g1"] and pairs[0].chosen == "caf\u00e9"
    assert len(warnings) == 1 and "line 2" in warnings[0] and "UTF-8" in warnings[0]


def test_line_separators_inside_model_text_do_not_split_rows(tmp_path):
    text = "first\u2028second\u2029third\x85fourth"
    run = make_run(tmp_path, [row("u1", chosen=text), row("u2")])
    assert "\u2028" in (run / "preferences.jsonl").read_text(encoding="utf-8")  # written raw
    pairs = load_pairs(run)
    assert [p.id for p in pairs] == ["u1", "u2"] and pairs[0].chosen == text
    store = ReviewStore(run / "reviews.jsonl", {p.id: p for p in pairs})
    store.append(Review("sub-u2028a", "ann", "t", "u1", 1, "chosen", 8, (), (), text))
    again = ReviewStore(run / "reviews.jsonl", {p.id: p for p in pairs})
    assert again.latest[("ann", "u1")].comment == text and not again.warnings


def test_store_appends_durably_dedups_and_keeps_the_latest(tmp_path):
    pairs = {p.id: p for p in load_pairs(make_run(tmp_path, [row("a"), row("b")]))}
    path = tmp_path / "reviews.jsonl"
    store = ReviewStore(path, pairs)
    first = Review("sub-0000001", "ann", "t1", "a", 1, "chosen", 8)
    assert store.append(first) is True
    assert store.append(first) is False  # the same submission again (a retry): nothing written
    assert store.append(Review("sub-0000002", "ann", "t2", "a", 8, "chosen", 1)) is True
    assert store.append(Review("sub-0000003", "bob", "t3", "a", 3, "rejected", 3)) is True
    assert len(path.read_bytes().split(b"\n")) == 4  # three lines and the final "\n"
    again = ReviewStore(path, pairs)  # a restart reads the same state back
    assert {k: v.likert for k, v in again.latest.items()} == {("ann", "a"): 1, ("bob", "a"): 3}
    assert again.append(first) is False  # still known after a restart
    # a second server on the same run sees what the first one appends
    store.append(Review("sub-0000004", "cy", "t4", "b", 5, "rejected", 5))
    again.refresh()
    assert again.latest[("cy", "b")].likert == 5


def test_store_skips_damaged_lines_and_never_rewrites_them(tmp_path):
    pairs = {p.id: p for p in load_pairs(make_run(tmp_path, [row("a"), row("b")]))}
    good = Review("sub-good-01", "ann", "t", "a", 2, "chosen", 7).to_row()
    tampered = dict(good, submission_id="sub-tamper", likert=1)  # no longer matches rating_shown and left
    lines = [json.dumps(good), "{not json", json.dumps(dict(good, submission_id="sub-other1", pair_id="gone")),
             json.dumps(tampered), json.dumps(dict(good, submission_id="sub-range1", rating_shown=9, likert=9)),
             json.dumps(dict(good, submission_id="sub-flag01", flags={"chosen": ["<script>"], "rejected": []})),
             json.dumps(dict(good, submission_id="sub-ok-02", pair_id="b"))]
    damaged = ("\n".join(lines) + "\n").encode() + b'{"reviewer": "\xff\xfe"}\n' + b'{"submission_id": "sub-half1", "revie'  # not UTF-8; a write cut short
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(damaged)
    log = []
    store = ReviewStore(path, pairs, log=log.append)
    assert set(store.latest) == {("ann", "a"), ("ann", "b")}
    assert store.skipped == 7 and len(log) == 7
    assert [int(re.search(r"line (\d+)", w).group(1)) for w in store.warnings] == [2, 3, 4, 5, 6, 8, 9]
    assert "UTF-8" in store.warnings[5] and "cut short" in store.warnings[6]
    assert path.read_bytes() == damaged  # reading changed nothing
    # The next rating starts on a line of its own, after the cut-short one, which stays.
    store.append(Review("sub-new-001", "bob", "t", "a", 8, "chosen", 1))
    data = path.read_bytes()
    assert data.startswith(damaged) and data[len(damaged):len(damaged) + 1] == b"\n"
    again = ReviewStore(path, pairs)
    assert again.latest[("bob", "a")].likert == 1 and again.skipped == 7


# ------------------------------------------------------------------ HTTP


@pytest.fixture
def client(tmp_path):
    run = make_run(tmp_path / "run", [
        row("h1", chosen="<script>window.pwned=1</script><b>bold</b>", rejected="plain & simple",
            prompt="<img src=x onerror=alert(1)>", category="<i>cat</i>", chosen_prob=0.8, order_agreement=1.0,
            label_principles=["<p>rin</p>"], label_principle_probs=[0.8]),
        row("h2", chosen_prob=0.6, order_agreement=0.0, category="c"),
    ])
    app = create_app(run, log=lambda m: None)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.run = run
        c.state = app.state.review
        yield c


def _post_body(c, **over):
    body = {"token": c.state.token, "submission_id": "sub-abcdef1", "pair_id": "h2", "reviewer": "ann", "rating": 3,
            "flags_left": [], "flags_right": [], "comment": ""}
    body.update(over)
    return body


def test_page_escapes_model_text(client):
    page = client.get("/pair/0?reviewer=ann")
    assert page.status_code == 200
    assert "<script>window" not in page.text and "<b>bold" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text and "plain &amp; simple" in page.text
    client.post("/api/rate", json=_post_body(client, pair_id="h1"))
    stats = client.get("/stats").text
    assert "&lt;i&gt;cat&lt;/i&gt;" in stats and "&lt;p&gt;rin&lt;/p&gt;" in stats and "<i>cat" not in stats
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_hostile_and_broken_posts_are_refused_and_write_nothing(client):
    reviews = client.run / "reviews.jsonl"
    cases = [
        (dict(rating=0), 422, "rating must be a whole number from 1 to 8"),
        (dict(rating=9), 422, "rating must be"),
        (dict(rating=4.5), 422, "rating must be"),
        (dict(rating=True), 422, "rating must be"),
        (dict(rating="8; drop"), 422, "rating must be"),
        (dict(pair_id="no-such-pair"), 404, "unknown pair id 'no-such-pair'"),
        (dict(pair_id=["h2"]), 404, "unknown pair id"),
        (dict(token="guessed"), 403, "stale page token"),
        (dict(token=None), 403, "stale page token"),
        (dict(reviewer=""), 422, "reviewer name missing"),
        (dict(reviewer="x" * 65), 422, "1-64 printable"),
        (dict(reviewer="a\nb"), 422, "printable"),
        (dict(flags_left=["harmful", "<script>"]), 422, "flags_left must be a list of"),
        (dict(comment="x" * 4001), 422, "at most 4000"),
        (dict(submission_id="short"), 422, "submission_id"),
        (dict(extra="1"), 422, "unknown field"),
    ]
    for over, status, message in cases:
        r = client.post("/api/rate", json=_post_body(client, **over))
        assert r.status_code == status, (over, r.text)
        assert message in r.json()["error"], (over, r.text)
    r = client.post("/api/rate", json=_post_body(client), headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = client.post("/api/rate", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = client.post("/api/rate", content=json.dumps(_post_body(client)), headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/rate", json=_post_body(client, comment="y" * 70_000))
    assert r.status_code == 413
    r = client.post("/rate", data={**_post_body(client), "rating": "12"})
    assert r.status_code == 422 and "rating not stored: rating must be" in r.text
    r = client.post("/rate", content="rating=3&rating=4", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "more than once" in r.text
    r = client.get("/pair/0?reviewer=ann", headers={"host": "attacker.example"})
    assert r.status_code == 421
    assert not reviews.exists()  # nothing was written by any of them
    assert client.get("/api/stats").json()["ratings"] == 0


def test_ratings_by_json_and_by_form_are_stored_once_and_the_latest_counts(client):
    reviews = client.run / "reviews.jsonl"
    lc = left_is_chosen("h2", "ann")
    body = _post_body(client, rating=shown_for(True, lc), submission_id="sub-first01", flags_left=["off_topic"])
    r1 = client.post("/api/rate", json=body)
    r2 = client.post("/api/rate", json=body)  # a retry of the same submission
    assert r1.json()["duplicate"] is False and r2.json()["duplicate"] is True
    assert r1.json()["time"] == r2.json()["time"]
    assert len(reviews.read_text().split("\n")) == 2
    stored = json.loads(reviews.read_text().split("\n")[0])
    assert stored["likert"] == 8 and stored["prefers"] == "chosen" and stored["reviewer"] == "ann"
    assert stored["flags"]["chosen" if lc else "rejected"] == ["off_topic"]
    # the plain form (no script): a new submission that changes the answer, then a redirect
    r = client.post("/rate", data={**_post_body(client), "submission_id": "sub-second1", "rating": str(shown_for(False, lc)),
                                   "flags_right": ["harmful", "wrong"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/pair/1"
    s = client.get("/api/stats").json()
    assert s["ratings"] == 1 and s["agreement"]["overall"] == {"n": 1, "agree": 0, "rate": 0.0}
    page = client.get("/pair/1?reviewer=ann").text
    assert re.search(r'id="rate-%d"[^>]*\n?\s*class="rate selected"' % shown_for(False, lc), page)
    assert 'id="flag-right-harmful"\n            checked' in page or re.search(r'id="flag-right-harmful"\s+checked', page)


def test_pages_navigation_and_reviewer(client):
    assert "Your name" in client.get("/").text
    r = client.get("/?reviewer=ann", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/pair/0"
    client.post("/api/rate", json=_post_body(client, pair_id="h1"))
    assert client.get("/next?after=-1", follow_redirects=False).headers["location"] == "/pair/1"  # h1 is rated
    assert client.get("/pair/7").status_code == 404
    bad = client.get("/?reviewer=a%07b")
    assert bad.status_code == 422 and "printable" in bad.text


# ------------------------------------------------------------------ command line


def test_cli_refuses_a_folder_without_preferences(tmp_path, capsys):
    from rlaif.cli import main

    (tmp_path / "chunks").mkdir()
    assert main(["review", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "no preferences.jsonl" in err and "Traceback" not in err


def _start(run, port="0"):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "review", str(run), "--port", port, "--reviewer", "ann"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"review at (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError(f"no URL printed: {''.join(lines)}")


def test_cli_serves_on_loopback_and_a_killed_server_loses_no_rating(tmp_path):
    import httpx

    run = make_run(tmp_path, [row("k1"), row("k2")])
    proc, url, lines = _start(run)
    try:
        assert "2 pairs from" in "".join(lines)
        page = httpx.get(url + "pair/0")  # --reviewer: no name asked
        token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
        r = httpx.post(url + "api/rate", json={"token": token, "submission_id": "sub-killed1", "pair_id": "k1",
                                               "reviewer": "ann", "rating": 5})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: what was acknowledged must be on disk
        proc.wait()
    proc, url2, _ = _start(run)
    try:
        s = httpx.get(url2 + "api/stats").json()
        assert s["ratings"] == 1 and s["reviewers"] == {"ann": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
