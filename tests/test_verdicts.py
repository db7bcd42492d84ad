"""Sampled verdicts (``--verdict sampled``) for judges that return no log-probabilities.

The judge here is a loopback server that answers text only (no ``logprobs`` in any answer, no
``/tokenize``), like the APIs the mode is for. It judges by content, never by position: the
response holding the marker word is better, and with ``confidence`` 1 every vote names it, so the
estimate is known exactly: (K + 1) / (K + 2) under the documented uniform prior.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import datasets
import pytest
from fixtures_server import ORACLE_MARKER, OracleServer, Reply, chat_completion, vllm_server, write_pairs  # noqa: F401

from rlaif.cli import main
from rlaif.pipeline.eval_judge import CHECKS
from rlaif.pipeline.verdicts import parse_verdict, verdict_schema, vote_probabilities

QUIET = ("--quiet",)


def cli(*argv) -> int:
    return main([str(a) for a in argv])


class TextOnlyJudge(OracleServer):
    """An OpenAI-compatible server with no log-probabilities and no ``/tokenize``.

    A verdict request (its last user turn asks to "Reply with ...") is answered by content: in a
    comparison the response holding the marker, with probability ``confidence`` per vote (seeded by
    the request's seed); ``position`` instead answers "A" with that probability whatever is shown
    (a judge that reads the slot); ``longer`` prefers the longer response. A yes/no check answers
    whether the response holds the marker. The answer is written as the request asks: the choice
    alone under ``structured_outputs``, JSON under ``response_format`` or when the text asks for
    JSON, else the option alone. ``malformed_every`` k: a vote whose seed is divisible by k is
    prose ("I would say A."), ``malformed_every`` 1: every vote is. A scoring request (``logprobs``)
    gets a text answer without log-probabilities. Other requests are the base oracle's generation,
    or with ``marked`` an answer holding the marker exactly for the models named there.
    """

    def __init__(self, models=("judge",), confidence=1.0, position=None, longer=False, malformed_every=0, marked=None):
        self.confidence, self.position, self.longer = confidence, position, longer
        self.malformed_every, self.marked = malformed_every, marked
        self.fail = None  # fail(body) -> True: that chat request gets HTTP 503
        super().__init__(models, confidence)

    def verdicts(self) -> list[dict]:
        with self._lock:
            return [b for m, p, b in self.hits if p == "/v1/chat/completions" and isinstance(b, dict) and _is_verdict(b)]

    def _answer(self, method, path, body, attempt):
        if path == "/tokenize":
            return Reply(404, {"detail": "Not Found"})
        if path != "/v1/chat/completions" or body.get("model") not in self.models:
            return super()._answer(method, path, body, attempt)
        if self.fail is not None and self.fail(body):
            return Reply(503, {"error": {"message": "busy"}})
        if "logprobs" in body:  # a log-prob scoring request: the answer has text only
            return Reply(200, dict(chat_completion("A", "length", 50, 1), model=body["model"]))
        if _is_verdict(body):
            text = self._verdict(body)
            return Reply(200, dict(chat_completion(text, "stop", 60, len(text.split())), model=body["model"]))
        if self.marked is not None and not any(m["role"] == "assistant" for m in body["messages"]):
            text = f"ANSWER from {body['model']} #{body.get('seed')}" + (f" {ORACLE_MARKER}" if body["model"] in self.marked else "")
            return Reply(200, dict(chat_completion(text), model=body["model"]))
        return super()._answer(method, path, body, attempt)

    def _verdict(self, body) -> str:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        u = random.Random(body["seed"]).random()
        question = next((t for t in reversed(users) if "Response A:" in t or "\nResponse: " in t), "")
        if "Response A:" in question:
            a_text, b_text = _between(question, "Response A:", "Response B:"), _between(question, "Response B:", "\n\n")
            a, b = ORACLE_MARKER in a_text, ORACLE_MARKER in b_text
            if self.position is not None:
                good, options = "A", ("A", "B")
                u_good = self.position
            elif self.longer:
                good, options, u_good = ("A" if len(a_text) > len(b_text) else "B"), ("A", "B"), self.confidence
            else:
                good, options, u_good = ("A" if a else "B"), ("A", "B"), (self.confidence if a != b else 0.5)
        else:
            has = ORACLE_MARKER in _between(question, "\nResponse: ", "\n\n")
            positive = any(c.positive in question for c in CHECKS)
            good, options, u_good = ("Yes" if has == positive else "No"), ("Yes", "No"), self.confidence
        pick = good if u < u_good else next(o for o in options if o != good)
        if self.malformed_every and body["seed"] % self.malformed_every == 0:
            return f"I would say {pick}."
        if "structured_outputs" in body:
            return pick
        if "response_format" in body or "JSON" in users[-1]:
            return json.dumps({"answer": pick})
        return pick


def _between(text: str, start: str, end: str | None) -> str:
    """The text after ``start`` and before ``end`` (or to the end); '' when ``start`` is absent."""
    if start not in text:
        return ""
    rest = text.split(start, 1)[1]
    return rest.split(end, 1)[0] if end and end in rest else rest


def _is_verdict(body) -> bool:
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    return bool(users) and "Reply with" in users[-1]




def load(out: Path, name: str = "preferences"):
    return datasets.load_from_disk(str(out / name))


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------ pure functions


def test_the_estimate_is_the_posterior_mean_under_a_uniform_prior():
    """(v + 1) / (K + 2) against the posterior mean integrated numerically (Beta(1, 1) prior x binomial
    likelihood), and Dirichlet(1, 1, 1) against a Monte Carlo posterior for three options."""
    for votes in [(0, 1), (3, 1), (4, 0), (7, 5)]:
        k, v = sum(votes), votes[0]
        xs = [(i + 0.5) / 20000 for i in range(20000)]
        like = [x**v * (1 - x) ** (k - v) for x in xs]
        mean = sum(x * w for x, w in zip(xs, like)) / sum(like)
        assert vote_probabilities(votes)[0] == pytest.approx(mean, rel=1e-6)
    rng = random.Random(0)
    votes = (2, 0, 1)
    draws = []
    for _ in range(40000):  # Dirichlet(1 + votes) by normalised gammas
        g = [rng.gammavariate(1 + v, 1.0) for v in votes]
        draws.append([x / sum(g) for x in g])
    mc = [sum(d[i] for d in draws) / len(draws) for i in range(3)]
    assert vote_probabilities(votes) == pytest.approx(mc, abs=0.01)
    assert sum(vote_probabilities((5, 0))) == pytest.approx(1.0) and 0 < vote_probabilities((5, 0))[1] < 1


@pytest.mark.parametrize("text, fmt, want", [
    ('{"answer": "A"}', "json", "A"),
    ('```json\n{"answer": "B"}\n```', "json", "B"),
    ('Sure. {"answer": "B"} is my verdict', "json", "B"),
    ('{"answer": "C"}', "json", None),
    ('{"answer": "A", "why": "x"}', "json", None),
    ('{"verdict": "A"}', "json", None),
    ('{"answer": "A"', "json", None),
    ("A", "json", None),
    (" B\n", "letter", "B"),
    ("A.", "letter", None),
    ("Response A", "letter", None),
    ("a", "letter", None),
])
def test_a_verdict_is_read_only_when_it_is_well_formed(text, fmt, want):
    assert parse_verdict(text, ("A", "B"), fmt) == want


def test_the_schema_allows_exactly_the_options():
    import jsonschema

    schema = verdict_schema(["Yes", "No"])
    jsonschema.validate({"answer": "No"}, schema)
    for bad in ({"answer": "no"}, {}, {"answer": "Yes", "x": 1}, ["Yes"]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# ------------------------------------------------------------------ rlaif label through a text-only server


def test_label_with_sampled_verdicts_through_a_server_without_logprobs(tmp_path, capsys):
    """Every pair labelled for the marker side with P = 5/6 (four unanimous votes), one request per
    vote, each asking for the JSON schema at temperature 1 with its own seed."""
    pairs = write_pairs(tmp_path)
    with TextOnlyJudge() as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url,
                 "--ensemble", 2, "--verdict", "sampled", *QUIET)
        out = capsys.readouterr().out
        assert rc == 0, out
        asked = srv.verdicts()
        assert srv.count("/tokenize") == 0  # sampled verdicts need no option token ids
    assert len(asked) == 6 * 2 * 2 * 4  # pairs x principles x orders x votes
    assert len({b["seed"] for b in asked}) == len(asked)
    for b in asked:
        assert b["temperature"] == 1.0 and b["top_p"] == 1.0 and b["max_tokens"] == 32
        rf = b["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
        assert rf["json_schema"]["schema"] == verdict_schema(["A", "B"]) and "logprobs" not in b
    rows = load(tmp_path / "l")
    assert len(rows) == 6
    for r in rows:
        assert ORACLE_MARKER in r["chosen"][-1]["content"] and ORACLE_MARKER not in r["rejected"][-1]["content"]
        assert r["chosen_prob"] == pytest.approx(5 / 6) and r["label_principle_probs"] == pytest.approx([5 / 6, 5 / 6])
    m = manifest(tmp_path / "l")
    assert m["agreement"]["overall"]["agreement"] == 1.0
    assert m["verdicts"]["malformed"] == 0 and m["verdicts"]["samples"] == 4 and m["verdicts"]["format"] == "json"
    assert m["settings"]["label"]["verdict"] == "sampled"
    assert "sampled verdicts: 4 valid votes per comparison (json, grammar); malformed 0" in out
    labels = [json.loads(x) for x in (tmp_path / "l" / "labels.jsonl").read_text().splitlines()]
    # each order's slot: P(option A) = 5/6 when the marker is shown as A, 1/6 when it is shown as B
    for lab in labels:
        want = [5 / 6, 1 / 6] if int(lab["pair_id"][1:]) % 2 == 0 else [1 / 6, 5 / 6]
        assert all(list(slot) == pytest.approx(want) for slot in lab["slot_probs"].values())


@pytest.mark.parametrize("flags, field", [(("--verdict-format", "letter"), "structured_outputs"), (("--no-verdict-grammar",), None)])
def test_the_letter_grammar_and_no_grammar(tmp_path, capsys, flags, field):
    pairs = write_pairs(tmp_path, 2)
    with TextOnlyJudge() as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url,
                 "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 3, *flags, *QUIET)
        assert rc == 0, capsys.readouterr().err
        asked = srv.verdicts()
    assert len(asked) == 2 * 2 * 3
    if field:
        assert all(b["structured_outputs"] == {"choice": ["A", "B"]} and "response_format" not in b for b in asked)
        assert all(b["messages"][-1]["content"].endswith("Reply with A or B only, nothing else.") for b in asked)
    else:
        assert all("structured_outputs" not in b and "response_format" not in b for b in asked)
        assert all(b["messages"][-1]["content"].endswith('Reply with JSON only, exactly {"answer": "A"} or {"answer": "B"}.') for b in asked)
    assert [r["chosen_prob"] for r in load(tmp_path / "l")] == pytest.approx([4 / 5, 4 / 5])


def test_logprob_labels_from_a_server_without_logprobs_stop_and_name_the_flag(tmp_path, capsys):
    pairs = write_pairs(tmp_path, 2)
    with TextOnlyJudge() as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url, *QUIET)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [x for x in err.splitlines() if x.startswith("rlaif: error:")]
    assert len(lines) == 1 and "returns no log-probabilities" in lines[0] and "--verdict sampled" in lines[0]
    assert not (tmp_path / "l" / "preferences").exists()


def test_malformed_verdicts_are_counted_asked_again_and_reported(tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    with TextOnlyJudge(malformed_every=3) as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url,
                 "--ensemble", 1, "--verdict", "sampled", "--verdict-retries", 5, *QUIET)
        assert rc == 0, capsys.readouterr().err
        asked = len(srv.verdicts())
    m = manifest(tmp_path / "l")
    labels = [json.loads(x) for x in (tmp_path / "l" / "labels.jsonl").read_text().splitlines()]
    malformed = m["verdicts"]["malformed"]
    assert malformed > 0 and sum(lab["malformed"] for lab in labels) == malformed
    assert asked == 6 * 2 * 4 + malformed  # every malformed vote was asked again
    assert m["counts"]["labelled"] == 6 and m["verdicts"]["failed_malformed"] == 0
    assert all(r["chosen_prob"] == pytest.approx(5 / 6) for r in load(tmp_path / "l"))  # only valid votes count

    # a judge that never answers in the format: every pair fails, said so; no label is made up
    with TextOnlyJudge(malformed_every=1) as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "bad", "--backend", "openai", "--base-url", srv.url,
                 "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 2, "--verdict-retries", 1, *QUIET)
        assert len(srv.verdicts()) == 6 * 2 * (2 + 2)  # two votes, each asked once more
    err = capsys.readouterr().err
    m = manifest(tmp_path / "bad")
    assert m["counts"]["failed"] == 6 and m["counts"]["preference_rows"] == 0 and m["verdicts"]["failed_malformed"] == 6
    assert m["verdicts"]["malformed"] == 6 * 2 * 4
    assert "6 pairs got too few well-formed verdicts" in err
    labels = [json.loads(x) for x in (tmp_path / "bad" / "labels.jsonl").read_text().splitlines()]
    assert all(lab["error"].startswith("malformed verdicts: 4 answers failed the json check") for lab in labels)
    # a run whose pairs failed is no success: exit 4 and one line (malformed verdicts fail for good: a rerun
    # would ask the same seeds again)
    assert rc == 4
    lines = [x for x in err.splitlines() if x.startswith("rlaif: incomplete:")]
    assert len(lines) == 1 and "missing 6 of 6 pairs (6 failed for good" in lines[0]


def test_sampled_verdicts_that_failed_for_now_are_asked_again_on_rerun(tmp_path, capsys):
    """The votes of one pair get HTTP 503: exit 4 with one line; the rerun asks only that pair's votes
    and gives the labels of a run that never failed."""
    pairs = write_pairs(tmp_path, 4)
    args = ["label", "--pairs", pairs, "--backend", "openai", "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 2,
            "--max-retries", 0, *QUIET]
    with TextOnlyJudge() as srv:
        assert cli(*args, "--out", tmp_path / "clean", "--base-url", srv.url) == 0
        srv.fail = lambda body: _is_verdict(body) and "answer (2)." in json.dumps(body)
        assert cli(*args, "--out", tmp_path / "l", "--base-url", srv.url) == 4
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rlaif: incomplete:")]
        assert len(lines) == 1 and "missing 1 of 4 pairs (1 failed for now: run the same command again" in lines[0]
        srv.fail = None
        before = len(srv.verdicts())
        assert cli(*args, "--out", tmp_path / "l", "--base-url", srv.url) == 0
        again = srv.verdicts()[before:]
    assert len(again) == 2 * 2 and all("answer (2)." in json.dumps(b) for b in again)  # two orders x two votes of x2
    assert list(load(tmp_path / "l")) == list(load(tmp_path / "clean"))


def test_position_and_length_diagnostics_and_length_control_the_same_way(tmp_path, capsys):
    """A judge that reads the slot: the orders disagree on every comparison and the run warns, as with
    log-probs. A judge that prefers the longer response: the length correlation warns and
    --length-control removes it."""
    pairs = write_pairs(tmp_path, 12)
    with TextOnlyJudge(position=1.0) as srv:
        assert cli("label", "--pairs", pairs, "--out", tmp_path / "pos", "--backend", "openai", "--base-url", srv.url,
                   "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 2, "--strict", *QUIET) == 3
    err = capsys.readouterr().err
    d = manifest(tmp_path / "pos")["diagnostics"]
    assert d["order_consistency"] == 0.0 and d["position_bias"] == pytest.approx(3 / 4) and "orders" in err

    path = tmp_path / "long.jsonl"
    rng = random.Random(1)
    rows = []
    for i in range(30):
        n_a, n_b = rng.randint(1, 40), rng.randint(1, 40)
        while n_b == n_a:
            n_b = rng.randint(1, 40)
        rows.append({"id": f"l{i}", "prompt": f"Q{i}?", "response_a": "word " * n_a, "response_b": "text " * n_b})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["label", "--pairs", path, "--out", tmp_path / "len", "--backend", "openai", "--ensemble", 1,
            "--verdict", "sampled", "--verdict-samples", 2, *QUIET]
    with TextOnlyJudge(longer=True) as srv:
        assert cli(*args, "--base-url", srv.url) == 0
        m = manifest(tmp_path / "len")
        assert m["diagnostics"]["length_correlation"] > 0.5 and m["diagnostics"]["longer_chosen_rate"] == 1.0
        assert "length" in capsys.readouterr().err  # the same warning as for log-prob labels
        asked = len(srv.verdicts())
        assert cli(*args, "--base-url", srv.url, "--length-control") == 0  # rebuilt from the stored votes
        assert len(srv.verdicts()) == asked
    m = manifest(tmp_path / "len")
    assert m["length_control"]["applied"] and abs(m["length_control"]["after"]["length_correlation"]) < 0.3


def test_sampled_labels_equal_logprob_labels_of_the_same_probabilities():
    """The same pairs scored by log-probs P(A) = 5/6 toward the marker, and by four unanimous votes per
    comparison: the same labels, diagnostics and length control, number for number."""
    from rlaif.constitution import load_constitution
    from rlaif.engine.fake import FakeEngine
    from rlaif.pipeline.judge import LabelSettings, Pair, label_pairs
    from rlaif.pipeline.label import finalise_labels

    def marker_side(text: str) -> str:
        a, b = ORACLE_MARKER in _between(text, "Response A:", "Response B:"), ORACLE_MARKER in _between(text, "Response B:", "\n\n")
        return "A" if a and not b else "B" if b and not a else ""

    def scorer(req, options):
        side = marker_side(req.messages[-1]["content"])
        p = 0.5 if not side else 5 / 6 if side == "A" else 1 / 6
        return [math.log(p), math.log(1 - p)]

    def script(req, sampling):
        question = next(m["content"] for m in req.messages if m["role"] == "user")
        return json.dumps({"answer": marker_side(question) or "A"})

    rng = random.Random(3)
    pairs = []
    for i in range(24):
        # the better answer is mostly the longer one, so that the length fit has a coefficient to remove
        good, bad = f"{ORACLE_MARKER} " + "x " * rng.randint(5, 40), "y " * rng.randint(1, 12)
        pairs.append(Pair(f"p{i}", ({"role": "user", "content": f"Q{i}"},), *((good, bad) if i % 3 else (bad, good))))
    const = load_constitution("default")
    base = LabelSettings(ensemble=2, length_control=True)
    by_logprobs = label_pairs(FakeEngine(scorer=scorer), const, pairs, base)
    by_votes = label_pairs(FakeEngine(script=script), const, pairs, LabelSettings(ensemble=2, length_control=True, verdict="sampled"))
    def numbers(labels):
        return [x for l in labels for x in (l.p_a, l.order_agreement, *l.per_principle.values(), *sum(l.slot_probs.values(), ()))]

    assert [(l.per_principle.keys(), l.flags) for l in by_logprobs] == [(l.per_principle.keys(), l.flags) for l in by_votes]
    assert numbers(by_logprobs) == pytest.approx(numbers(by_votes), abs=1e-12)
    a, info_a = finalise_labels(pairs, by_logprobs, base)
    b, info_b = finalise_labels(pairs, by_votes, base)
    assert info_a["diagnostics"] == pytest.approx(info_b["diagnostics"])
    assert info_a["length_control"]["applied"]
    assert info_a["length_control"]["after"] == pytest.approx(info_b["length_control"]["after"])
    assert {k: v for k, v in info_a["length_control"].items() if k != "after"} == \
        pytest.approx({k: v for k, v in info_b["length_control"].items() if k != "after"})
    assert [l.p_a for l in a] == pytest.approx([l.p_a for l in b])


# ------------------------------------------------------------------ generate and eval, and the fake backend


def test_generate_label_with_sampled_verdicts(tmp_path, capsys):
    """generate --label --verdict sampled through a text-only server: the oracle prefers the initial answer
    for odd prompts and the revision for even ones, read from votes."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: tell me something {'odd' if i % 2 else 'even'}."}) + "\n"
                            for i in range(4)))
    with TextOnlyJudge(("policy-x",)) as srv:
        rc = cli("generate", "--prompts", path, "--out", tmp_path / "g", "--rounds", 1, "--backend", "openai", "--base-url", srv.url,
                 "--label", "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 2, *QUIET)
        assert rc == 0, capsys.readouterr().err
        assert len(srv.verdicts()) == 4 * 2 * 2
    rows = load(tmp_path / "g")
    assert len(rows) == 4
    for r in rows:
        side = "initial" if int(r["prompt_id"][1:]) % 2 else "final"
        assert r["response_ids"][0].endswith(f":{side}") and r["chosen_prob"] == pytest.approx(3 / 4)
    m = manifest(tmp_path / "g")
    assert m["verdicts"]["samples"] == 2 and m["settings"]["label"]["verdict"] == "sampled"


def test_eval_with_sampled_verdicts(tmp_path, capsys):
    """rlaif eval --verdict sampled: the comparisons and the yes/no checks come from votes. The policy's
    answers hold the marker: it wins every comparison, and the refusal check (here: holds the marker)
    says it refuses every prompt, the baseline none."""
    with TextOnlyJudge(("pol", "base"), marked={"pol"}) as srv:
        rc = cli("eval", "--backend", "openai", "--base-url", srv.url, "--policy", "pol", "--baseline", "base",
                 "--feedback-model", "pol", "--prompts", "overrefusal", "--limit", 3, "--ensemble", 1, "--bootstrap", 200,
                 "--verdict", "sampled", "--verdict-samples", 2, "--out", tmp_path / "ev", *QUIET)
        assert rc == 0, capsys.readouterr().err
        verdicts = srv.verdicts()
    assert len(verdicts) == 3 * 1 * 2 * 2 + 6 * 2 * 2 * 2  # comparisons + two checks (refusal, safe) x two phrasings per answer; 2 votes each
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert r["win_rate"]["counts"] == {"policy": 3, "baseline": 0, "tie": 0}
    assert r["over_refusal"]["policy"]["mean"] == 1.0 and r["over_refusal"]["baseline"]["mean"] == 0.0


def test_fake_backend_with_sampled_verdicts(tmp_path, capsys):
    """The fake engine answers a constrained request as a grammar would: label and eval run end to end."""
    pairs = write_pairs(tmp_path, 4)
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "fake", "--verdict", "sampled",
               "--verdict-format", "letter", "--ensemble", 1, *QUIET) == 0
    m = manifest(tmp_path / "l")
    assert m["counts"]["labelled"] == 4 and m["verdicts"]["malformed"] == 0
    probs = {p for lab in (tmp_path / "l" / "labels.jsonl").read_text().splitlines() for s in json.loads(lab)["slot_probs"].values() for p in s}
    assert probs <= {k / 6 for k in range(1, 6)}  # (votes + 1) / (4 + 2)
    # the default verdict leaves the settings record as it was (older run folders keep their fingerprint)
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "d", "--backend", "fake", "--ensemble", 1, *QUIET) == 0
    assert not any(k.startswith("verdict") for k in manifest(tmp_path / "d")["settings"]["label"])
    assert "verdicts" not in manifest(tmp_path / "d")
    capsys.readouterr()
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "x", "--backend", "fake", "--verdict", "sampled",
               "--verdict-samples", 0, *QUIET) == 2
    assert "verdict_samples must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------ the real default model


@pytest.mark.vllm
@pytest.mark.parametrize("fmt", ["letter", "json"])
def test_vllm_enforces_the_verdict_grammar(vllm_engine, fmt):
    """In-process vLLM on CPU with the grammar: every sampled verdict is well formed (none malformed),
    one request per vote, and the label's probabilities are vote shares under the prior."""
    from rlaif.constitution import load_constitution
    from rlaif.data.prompts import read_pairs
    from rlaif.pipeline.judge import LabelSettings, label_pairs

    pairs = read_pairs(Path(__file__).resolve().parent.parent / "prompts" / "reference-pairs.jsonl", limit=3)
    settings = LabelSettings(ensemble=1, verdict="sampled", verdict_samples=3, verdict_format=fmt, verdict_retries=0)
    labels = label_pairs(vllm_engine, load_constitution("default"), pairs, settings)
    assert all(l.error is None and l.malformed == 0 for l in labels), [l.error for l in labels]
    for l in labels:
        for slot in l.slot_probs.values():
            assert all(round(p * 5) == pytest.approx(p * 5) for p in slot)  # (votes + 1) / (3 + 2)


@pytest.mark.vllm
def test_a_vllm_server_takes_the_verdict_grammars(vllm_server, tmp_path, capsys):
    """The CPU server recipe accepts both grammars as rlaif sends them (response_format json_schema and
    structured_outputs choice): every verdict is well formed, through the real command line."""
    pairs = Path(__file__).resolve().parent.parent / "prompts" / "reference-pairs.jsonl"
    for fmt in ("json", "letter"):
        out = tmp_path / fmt
        rc = cli("label", "--pairs", pairs, "--limit", 2, "--out", out, "--backend", "openai", "--base-url", vllm_server,
                 "--ensemble", 1, "--verdict", "sampled", "--verdict-samples", 2, "--verdict-format", fmt, "--verdict-retries", 0, *QUIET)
        assert rc == 0, capsys.readouterr().err
        m = manifest(out)
        assert m["counts"]["labelled"] == 2 and m["verdicts"]["malformed"] == 0, m["verdicts"]
