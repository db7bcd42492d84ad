"""``rlaif generate --pairs west-of-n | rlcd``: pairs whose label comes by construction, not from a judge."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from fixtures_server import ORACLE_MARKER, OracleServer, Reply, chat_completion

from rlaif.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUIET = ("--quiet",)


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def by_length(prompts, responses):
    """A reward function for the tests: longer is better."""
    return [float(len(r)) for r in responses]


def write_prompts(folder: Path, n: int = 4) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: say something.", "category": "c"}) + "\n"
                            for i in range(n)))
    return path


def load(out: Path, name: str = "preferences"):
    return datasets.load_from_disk(str(out / name))


def test_west_of_n_pairs_best_and_worst_under_a_reward_function(tmp_path, capsys):
    """Each prompt's chosen answer is its sample with the highest reward, rejected the lowest (checked
    against the SFT rows, which hold every sample's final answer)."""
    out = tmp_path / "w"
    assert cli("generate", "--prompts", write_prompts(tmp_path, 6), "--out", out, "--backend", "fake", "--samples", 4,
               "--rounds", 1, "--pairs", "west-of-n", "--reward-fn", "test_constructed:by_length", "--chunk-size", 2, *QUIET) == 0
    finals: dict[str, list[str]] = {}
    for r in load(out, "sft"):
        finals.setdefault(r["prompt_id"], []).append(r["messages"][-1]["content"])
    rows = load(out)
    assert len(rows) > 0 and {r["label_source"] for r in rows} == {"west-of-n"}
    for r in rows:
        texts = finals[r["prompt_id"]]
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert len(chosen) == max(map(len, texts)) and len(rejected) == min(map(len, texts)) and len(chosen) > len(rejected)
        assert (r["chosen_reward"], r["rejected_reward"]) == (len(chosen), len(rejected)) and r["reward_gap"] == len(chosen) - len(rejected)
        assert r["n"] == 4 and r["reward_model"] == "test_constructed:by_length" and r["judge_prob"] is None
        assert r["prompt"] == [{"role": "user", "content": f"Question {r['prompt_id'][1:]}: say something."}]
    # pairs whose best and worst have the same reward give no pair
    equal_len = [pid for pid, t in finals.items() if len(set(map(len, t))) == 1]
    assert len(rows) == len(finals) - len(equal_len)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["constructed_pairs"] == len(rows) and "diagnostics" not in m  # no judge ran
    assert m["settings"]["label"]["pairs"] == "west-of-n" and m["settings"]["label"]["reward_fn"] == "test_constructed:by_length"


def test_west_of_n_with_a_reward_model(tmp_path, capsys):
    """A sequence-classification reward model (tiny, random): the rows' rewards are its scores."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlaif.models.model_zoo import prepare_default_model
    from rlaif.reward.models import SequenceClassifierReward

    tok = AutoTokenizer.from_pretrained(prepare_default_model())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, max_position_embeddings=512, num_labels=1, pad_token_id=tok.pad_token_id)
    rm = tmp_path / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(rm)
    tok.save_pretrained(rm)
    out = tmp_path / "w"
    assert cli("generate", "--prompts", write_prompts(tmp_path, 3), "--out", out, "--backend", "fake", "--samples", 3, "--rounds", 0,
               "--pairs", "west-of-n", "--reward-model", rm, *QUIET) == 0
    rows = load(out)
    score = SequenceClassifierReward(str(rm))
    for r in rows:
        got = score([r["prompt"]] * 2, [r["chosen"][0]["content"], r["rejected"][0]["content"]]).tolist()
        assert got == pytest.approx([r["chosen_reward"], r["rejected_reward"]], abs=1e-5) and got[0] > got[1]


class ContrastOracle(OracleServer):
    """Answers a prompt under a system prompt that says to follow a principle with the marker word
    (``contrary``: under the one that says to go against it), so the judge (the base oracle, which
    prefers the marker) agrees with the construction, or not. ``fail`` (a function of a chat request's
    body) picks requests answered with HTTP 503 (a server that is busy for that part of the run)."""

    def __init__(self, contrary=False):
        self.contrary, self.fail = contrary, None
        super().__init__(("policy",))

    def _answer(self, method, path, body, attempt):
        if path == "/v1/chat/completions" and isinstance(body, dict) and self.fail is not None and self.fail(body):
            return Reply(503, {"error": {"message": "busy"}})
        if path == "/v1/chat/completions" and isinstance(body, dict) and "allowed_token_ids" not in body:
            system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
            if "this principle" in system:
                positive = "must follow this principle" in system
                marked = positive != self.contrary
                return Reply(200, dict(chat_completion(f"CONTRAST answer{' ' + ORACLE_MARKER if marked else ''} #{body['seed']}"),
                                       model=body["model"]))
        return super()._answer(method, path, body, attempt)


def _contrast(body, question: str | None = None, positive: bool | None = None) -> bool:
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
    return ("this principle" in system and (question is None or user.startswith(question))
            and (positive is None or ("must follow this principle" in system) == positive))


def test_rlcd_pairs_by_construction_checked_by_the_judge(tmp_path, capsys):
    from rlaif.constitution import load_constitution
    from rlaif.pipeline.constructed import principle_text, rlcd_principle

    const = load_constitution("default")
    prompts = write_prompts(tmp_path, 4)
    with ContrastOracle() as srv:
        assert cli("generate", "--prompts", prompts, "--out", tmp_path / "r", "--backend", "openai", "--base-url", srv.url,
                   "--rounds", 0, "--pairs", "rlcd", "--label", "--ensemble", 1, *QUIET) == 0
        contrast = [b for b in srv.requests("generate") if any("this principle" in m["content"] for m in b["messages"] if m["role"] == "system")]
    assert len(contrast) == 4 * 2
    for b in contrast:  # the system prompt is the principle's text, the rest of the request is the prompt
        pid = next(m["content"] for m in b["messages"] if m["role"] == "user").split(":")[0].split()[-1]
        p = rlcd_principle(const, 0, f"p{pid}", 0)
        system = b["messages"][0]["content"]
        assert principle_text(p) in system and system.startswith(const.system_prompt or "Your answer")
        assert [m["role"] for m in b["messages"]] == ["system", "user"]
    rows = load(tmp_path / "r")
    assert len(rows) == 4 and {r["label_source"] for r in rows} == {"rlcd"}
    for r in rows:
        assert ORACLE_MARKER in r["chosen"][0]["content"] and ORACLE_MARKER not in r["rejected"][0]["content"]
        assert r["prompt"] == [{"role": "user", "content": f"Question {r['prompt_id'][1:]}: say something."}]  # no system prompt
        assert r["rlcd_principle"] == rlcd_principle(const, 0, r["prompt_id"], 0).id and r["judge_prob"] == pytest.approx(0.9)
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["pair_check"] == {"n": 4, "judged": 4, "ties": 0, "failed": 0, "agree": 4, "agreement": 1.0}
    assert "the judge agrees with 100% of 4 judged" in capsys.readouterr().out

    # a policy that does the opposite of what it is told: the construction keeps its label, the check says so
    with ContrastOracle(contrary=True) as srv:
        assert cli("generate", "--prompts", prompts, "--out", tmp_path / "c", "--backend", "openai", "--base-url", srv.url,
                   "--rounds", 0, "--pairs", "rlcd", "--label", "--ensemble", 1, *QUIET) == 0
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["pair_check"]["agreement"] == 0.0 and all(ORACLE_MARKER in r["rejected"][0]["content"] for r in load(tmp_path / "c"))

    # the card of a published rlcd run says where its labels come from and what the judge's check found
    assert cli("publish", tmp_path / "r", "--out", tmp_path / "pub") == 0
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "`rlcd` (4 pairs)" in card and "RLCD, Yang et al. 2023" in card and "agreed with the construction on 100.0% of 4" in card


def test_rlcd_failed_contrast_requests_are_redone_on_rerun(tmp_path, capsys):
    """One negative-prompt request fails and one scoring request of the judge's check fails: exit 4 with
    the one line; the rerun asks again only what failed (that trajectory's answer and its two contrast
    answers, that pair's check) and gives the rows of a run that never failed."""
    prompts = write_prompts(tmp_path, 4)
    args = ["generate", "--prompts", prompts, "--backend", "openai", "--rounds", 0, "--pairs", "rlcd", "--label", "--ensemble", 1,
            "--max-retries", 0, "--chunk-size", 2, *QUIET]
    with ContrastOracle() as srv:
        assert cli(*args, "--out", tmp_path / "clean", "--base-url", srv.url) == 0
        srv.fail = lambda b: (_contrast(b, "Question 1:", positive=False)
                              or ("allowed_token_ids" in b and "Question 2:" in json.dumps(b)))
        assert cli(*args, "--out", tmp_path / "r", "--base-url", srv.url) == 4
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("rlaif: incomplete:")]
        assert len(lines) == 1 and "1 of 4 trajectories" in lines[0] and "1 of 3 AI labels" in lines[0]
        m = json.loads((tmp_path / "r" / "manifest.json").read_text())
        assert m["counts"]["failed"] == 1 and m["counts"]["preference_rows"] == 3
        srv.fail = None
        before = len(srv.requests("generate")), len(srv.requests("score"))
        assert cli(*args, "--out", tmp_path / "r", "--base-url", srv.url) == 0
        again = srv.requests("generate")[before[0]:]
        rescored = srv.requests("score")[before[1]:]
    assert sorted((_contrast(b), _contrast(b, positive=True)) for b in again) == [(False, False), (True, False), (True, True)]
    assert all(next(m["content"] for m in b["messages"] if m["role"] == "user").startswith("Question 1:") for b in again)
    assert len(rescored) == 2 * 2  # the check of p1's new pair and p2's failed one, both orders
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["counts"]["failed"] == 0 and m["counts"]["preference_rows"] == 4 and all(x["missing"] == 0 for x in m["missing"])
    assert list(load(tmp_path / "r")) == list(load(tmp_path / "clean"))


def test_settings_errors_and_fingerprints(tmp_path, capsys):
    from rlaif.pipeline.config import fingerprint, resolve

    prompts = write_prompts(tmp_path, 2)
    base = ["generate", "--prompts", prompts, "--out", tmp_path / "x", "--backend", "fake", *QUIET]
    for extra, why in [(("--pairs", "west-of-n", "--samples", 2), "needs one of --reward-model or --reward-fn"),
                       (("--pairs", "west-of-n", "--reward-fn", "a:b"), "samples_per_prompt >= 2"),
                       (("--reward-fn", "a:b"), "are for --pairs west-of-n")]:
        assert cli(*base, *extra) == 2
        assert why in capsys.readouterr().err
    plain = resolve({}, {"prompts": "p", "out": "o"}, {}).to_dict()
    assert "reward_model" not in plain["label"] and "reward_fn" not in plain["label"]  # older run folders keep their fingerprint
    won = resolve({}, {"prompts": "p", "out": "o", "samples_per_prompt": 2, "label.pairs": "west-of-n", "label.reward_fn": "m:f"}, {})
    assert won.to_dict()["label"]["reward_fn"] == "m:f" and fingerprint(won.to_dict()) != fingerprint(plain)
