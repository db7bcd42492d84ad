"""``--estimate``: a seeded pilot projects the whole run, each figure with an interval.

The fake backend counts tokens as words, so a run's totals are known exactly: the pilot of every
item must reproduce them (interval of width 0) and match the run's own counts, and a 12-item
pilot's intervals must hold them. The interval itself is checked by simulation (coverage) and the
t quantile against printed tables.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.pipeline.estimate import item_of, pilot_indices, project_total, stage_name

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "prompts" / "rlaif-prompts.jsonl"
NUM = r"([\d,]+(?:\.\d+)?(?:e[-+]\d+)?)"


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def table(out: str) -> dict[str, list[tuple[float, float, float]]]:
    """Stage -> [(mid, lo, hi) of requests, prompt tokens, output tokens] from the printed table."""
    rows = {}
    cell = re.compile(rf"{NUM} (?:\(exact\)|\[{NUM}, {NUM}\])")
    for line in out.splitlines():
        cells = cell.findall(line)
        if len(cells) == 3 and not line.startswith("wall"):
            stage = line[:16].strip()
            rows[stage] = [(float(m.replace(",", "")), float((lo or m).replace(",", "")), float((hi or m).replace(",", "")))
                           for m, lo, hi in cells]
    return rows


def test_the_interval_covers_the_total_95_percent_of_the_time():
    """Pilots of 12 from a skewed population of 60 items (token counts are skewed): the projected
    interval holds the true total in about 95% of draws (finite-population correction included)."""
    rng = random.Random(0)
    pop = [int(rng.lognormvariate(5, 0.6)) for _ in range(60)]
    truth = sum(pop)
    hits = 0
    draws = 3000
    for _ in range(draws):
        sample = rng.sample(pop, 12)
        _, lo, hi = project_total(sample, len(pop))
        hits += lo <= truth <= hi
    assert 0.91 <= hits / draws <= 0.975
    assert project_total(pop, len(pop)) == (truth, truth, truth)  # a pilot of everything is exact
    assert project_total([5.0, 5.0], 10) == (50.0, 50.0, 50.0)


def test_pilot_items_stages_and_tags():
    assert pilot_indices(5, 12, 0) == [0, 1, 2, 3, 4]
    picked = pilot_indices(100, 12, 7)
    assert picked == sorted(picked) and len(set(picked)) == 12 and picked == pilot_indices(100, 12, 7) != pilot_indices(100, 12, 8)
    assert stage_name("chunk 2/5 critique 1/2") == "critique" and stage_name("chunk 1/1 label reasoning") == "label reasoning"
    assert stage_name("compare (again)") == "compare" and stage_name("") == "other"
    items = ["p1", "p10", "p1#x"]
    assert item_of("p1#0", items) == "p1" and item_of("p10#3:initial~final", items) == "p10" and item_of("p1#x", items) == "p1#x"
    assert item_of("p1#x#2", items) == "p1#x" and item_of("q1", items) is None and item_of("p100", items) is None


def test_generate_estimate_matches_the_known_totals(tmp_path, capsys):
    args = ["generate", "--prompts", PROMPTS, "--limit", 48, "--backend", "fake", "--label", "--ensemble", 2, "--rounds", 2, "--quiet"]
    assert cli(*args, "--out", tmp_path / "est", "--estimate", "--estimate-pilot", 48) == 0
    exact = table(capsys.readouterr().out)
    assert not (tmp_path / "est").exists()  # nothing written where the run would go
    assert cli(*args, "--out", tmp_path / "run") == 0
    capsys.readouterr()
    tokens = json.loads((tmp_path / "run" / "manifest.json").read_text())["tokens"]
    for stage in ("response", "critique", "revision"):  # the meter agrees with the run's own counts
        got = exact[stage]
        assert all(mid == lo == hi for mid, lo, hi in got), stage
        assert [g[0] for g in got] == [tokens[stage]["requests"], tokens[stage]["prompt_tokens"], tokens[stage]["completion_tokens"]]
    pairs = 48  # revision mode: one pair per prompt, 2 principles x 2 orders each, one output token per scoring request
    assert exact["label"][0][0] == exact["label"][2][0] == pairs * 2 * 2
    assert exact["total"][1][0] == sum(exact[s][1][0] for s in ("response", "critique", "revision", "label"))

    assert cli(*args, "--out", tmp_path / "est", "--estimate", "--price-per-mtok", "3,15", "--gpu-hour-price", 2) == 0
    out = capsys.readouterr().out
    pilot = table(out)
    assert "projected from a pilot of 12" in out and "48 prompts" in out
    assert pilot["response"][0] == (48, 48, 48) and pilot["critique"][0] == (96, 96, 96)  # 2 rounds: requests are fixed
    assert pilot["critique"][1][1] < pilot["critique"][1][2]  # prompt tokens vary from prompt to prompt: a real interval
    misses = [(stage, truth, lo, hi) for stage, rows in exact.items() for (truth, _, _), (_, lo, hi) in zip(rows, pilot[stage])
              if not lo <= truth <= hi]
    assert len(misses) <= 2, misses  # 95% intervals: with 15 figures, one or two misses are expected now and then
    assert all(lo <= truth <= hi for truth, lo, hi in [(exact["total"][q][0], *pilot["total"][q][1:]) for q in range(3)])
    cost = re.search(rf"cost of tokens +{NUM} \[{NUM}, {NUM}\]", out)
    assert cost and float(cost.group(2)) <= (exact["total"][1][0] * 3 + exact["total"][2][0] * 15) / 1e6 <= float(cost.group(3))
    assert re.search(r"wall time on this engine .* start-up .*\(policy; paid once\)", out) and "cost of engine hours" in out
    assert not (tmp_path / "est").exists()


def test_the_pilot_measures_exactly_what_its_items_cost_in_the_whole_run(tmp_path):
    """Per item and stage, the pilot's counts equal that item's counts in a run of every item (seeds come
    from ids, not batches), so the projection is N x the mean over the pilot's own items, exactly."""
    from rlaif.cli.estimate import generate_pilot
    from rlaif.constitution import load_constitution
    from rlaif.engine.fake import FakeEngine
    from rlaif.pipeline.config import resolve
    from rlaif.pipeline.estimate import project

    const = load_constitution("default")
    cfg = resolve({}, {"prompts": str(PROMPTS), "out": "unused", "limit": 30, "label.enabled": True, "label.ensemble": 2,
                       "engine.backend": "fake"}, const.defaults)
    factory = lambda: FakeEngine()  # noqa: E731
    meter, ids, n, _ = generate_pilot(cfg, const, factory, "fake-model", None, "fake-model", 30)
    full = project(meter, ids, n)
    assert all(lo == mid == hi for q in full["total"].values() for mid, lo, hi in [q])
    meter12, ids12, _, _ = generate_pilot(cfg, const, factory, "fake-model", None, "fake-model", 12)
    small = project(meter12, ids12, n)
    for q in ("requests", "prompt_tokens", "output_tokens"):
        assert small["per_item"][q] == [full["per_item"][q][ids.index(i)] for i in ids12]
        assert small["total"][q][0] == pytest.approx(n * sum(small["per_item"][q]) / 12)
        assert full["total"][q][0] == sum(full["per_item"][q])


def test_label_and_eval_estimates_and_bad_options(tmp_path, capsys):
    pairs = ROOT / "prompts" / "reference-pairs.jsonl"
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "fake", "--estimate", "--ensemble", 3, "--quiet") == 0
    est = table(capsys.readouterr().out)
    n_pairs = sum(1 for line in pairs.read_text().splitlines() if line.strip())
    identical = 0
    assert est["label"][0] == (n_pairs * 3 * 2 - identical,) * 3  # every pair: 3 principles x 2 orders
    assert not (tmp_path / "l").exists()
    assert cli("eval", "--backend", "fake", "--policy", "p", "--prompts", "harmful", "helpful", "--limit", 10, "--ensemble", 1,
               "--out", tmp_path / "ev", "--estimate", "--estimate-pilot", 5, "--quiet") == 0
    out = capsys.readouterr().out
    est = table(out)
    assert "20 prompts" in out and est["policy answers"][0] == (20, 20, 20) and est["baseline answers"][0] == (20, 20, 20)
    assert est["compare"][0] == (40, 40, 40) and "checks" in est and not (tmp_path / "ev").exists()
    for bad, why in ((("--estimate-pilot", 1), "at least 2"), (("--price-per-mtok", "3"), "IN,OUT"), (("--gpu-hour-price", -1), ">= 0")):
        assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "fake", "--estimate", *bad, "--quiet") == 2
        assert why in capsys.readouterr().err


def test_label_estimate_through_a_server(tmp_path, capsys):
    """The openai backend: the client is connected before the pilot (start-up 0); requests and the
    server's token counts are what the projection adds up."""
    from fixtures_server import OracleServer

    rows = [{"id": f"x{i}", "prompt": f"Question {i}?", "response_a": f"answer {i}", "response_b": f"other {i}"} for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with OracleServer(("judge",)) as srv:
        assert cli("label", "--pairs", path, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url, "--ensemble", 1,
                   "--estimate", "--estimate-pilot", 5, "--quiet") == 0
        assert len(srv.requests("score")) == 5 * 2  # the pilot only
    est = table(capsys.readouterr().out)
    assert est["label"][0] == (40, 40, 40) and est["label"][1] == (40 * 50,) * 3  # the oracle reports 50 prompt tokens


def test_a_pilot_whose_requests_failed_is_no_success(tmp_path, capsys):
    """Some scoring requests of the pilot get HTTP 500: the table is printed, then one line says the run
    is incomplete, exit status 4; --allow-failures accepts it."""
    from fixtures_server import FaultyOracle

    rows = [{"id": f"x{i}", "prompt": f"Question {i}?", "response_a": f"answer {i}", "response_b": f"other {i}"} for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails = lambda body: "logprobs" in body and "Question 3?" in json.dumps(body)  # noqa: E731
    args = ["label", "--pairs", path, "--out", tmp_path / "l", "--backend", "openai", "--ensemble", 1, "--max-retries", 0,
            "--estimate", "--estimate-pilot", 20, "--quiet"]
    with FaultyOracle("500", fail=fails, models=("judge",)) as srv:
        assert cli(*args, "--base-url", srv.url) == 4
        io = capsys.readouterr()
        assert "label" in table(io.out)
        lines = [x for x in io.err.splitlines() if x.startswith("rlaif: incomplete:")]
        assert len(lines) == 1 and "missing 1 of 20 pairs" in lines[0]
        assert cli(*args, "--base-url", srv.url, "--allow-failures") == 0
    assert not (tmp_path / "l").exists()
