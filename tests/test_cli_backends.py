"""Every command x backend the docs advertise, through the real command line.

``rlaif generate``, ``rlaif label`` and ``rlaif bon`` run through ``rlaif.cli.main`` (and once
through ``python -m rlaif`` in a subprocess) with each backend:

* ``openai`` against loopback servers (:class:`fixtures_server.OracleServer`) that judge by
  content, never by position: the response holding the marker word wins. So the tests can
  check, end to end, which response ends up ``chosen``, which model each request named, and
  that rows record the model that answered;
* ``fake`` (the scripted engine);
* ``transformers`` and ``vllm`` on the default model, with tiny limits (``vllm`` ones are
  marked ``vllm``).

``rlaif train ppo`` samples with the in-process vLLM engine only; asking it for another
backend must fail at start with a clear message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from fixtures_server import ORACLE_MARKER, OracleServer, closed_port_url
from fixtures_server import write_pairs as marker_pairs

from rlaif.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUIET = ("--quiet",)


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def write_prompts(folder: Path, n: int = 4) -> Path:
    """Prompts p0..p{n-1}; the oracle's first answer holds the marker for the odd ones."""
    path = folder / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Question {i}: tell me something {'odd' if i % 2 else 'even'}.", "category": "c"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pairs(folder: Path, n: int = 6) -> Path:
    return marker_pairs(folder, n, categories=True)


def load(out: Path, name: str = "preferences") -> datasets.Dataset:
    return datasets.load_from_disk(str(out / name))


def text(messages) -> str:
    return messages[-1]["content"]


def assert_oracle_labels(rows, n: int, chosen_prob: float = 0.9) -> None:
    """Each row's chosen response is the one holding the marker, with the oracle's confidence."""
    assert len(rows) == n
    for r in rows:
        assert ORACLE_MARKER in text(r["chosen"]) and ORACLE_MARKER not in text(r["rejected"]), r["id"]
        assert r["chosen_prob"] == pytest.approx(chosen_prob, abs=1e-6)
        assert r["likert"] == 8 and r["label_source"] == "ai"


def assert_generate_orientation(rows) -> None:
    """The oracle prefers the initial answer for odd prompts and the revision for even ones."""
    for r in rows:
        side = "initial" if int(r["prompt_id"][1:]) % 2 else "final"
        assert r["response_ids"][0].endswith(f":{side}"), (r["prompt_id"], r["response_ids"])
    assert {r["response_ids"][0].rsplit(":", 1)[1] for r in rows} == {"initial", "final"}


def generate_args(prompts: Path, out: Path, *extra) -> list:
    return ["generate", "--prompts", prompts, "--out", out, "--rounds", 1, "--chunk-size", 2, *extra, *QUIET]


# ------------------------------------------------------------------ openai backend (loopback oracle servers)


def test_generate_openai_backend_with_labels(tmp_path, capsys):
    """The policy's server also judges when no feedback model is named."""
    with OracleServer(("policy-x",)) as srv:
        rc = cli(*generate_args(write_prompts(tmp_path), tmp_path / "g", "--backend", "openai", "--base-url", srv.url,
                                "--label", "--ensemble", 2))
        assert rc == 0, capsys.readouterr().err
        gen, score = srv.requests("generate"), srv.requests("score")
    rows = load(tmp_path / "g")
    assert_oracle_labels(rows, 4)
    assert_generate_orientation(rows)
    assert {r["model"] for r in rows} == {r["feedback_model"] for r in rows} == {"policy-x"}
    assert len(gen) == 4 * 3 and len(score) == 4 * 2 * 2  # 3 stages; 2 principles x 2 orders per pair
    assert {b["model"] for b in gen + score} == {"policy-x"}
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["engine"]["reported_models"] == {"policy-x": 28} and "feedback" not in manifest["engine"]
    # the SFT rows come from the server's revisions
    sft = load(tmp_path / "g", "sft")
    assert all(text(r["messages"]).startswith("REVISION") for r in sft)


def test_generate_openai_feedback_model_is_its_own_engine(tmp_path, capsys):
    """--feedback-model names the judge on the server: scoring requests ask for it, generation
    requests for the policy, and rows record the name the server reported for the judge."""
    with OracleServer(("judge-y", "policy-x"), reports={"judge-y": "judge-y@rev2"}) as srv:
        rc = cli(*generate_args(write_prompts(tmp_path), tmp_path / "g", "--backend", "openai", "--base-url", srv.url,
                                "--served-model", "policy-x", "--label", "--ensemble", 2, "--feedback-model", "judge-y"))
        assert rc == 0, capsys.readouterr().err
        gen, score = srv.requests("generate"), srv.requests("score")
    assert len(score) == 16 and {b["model"] for b in score} == {"judge-y"}
    assert len(gen) == 12 and {b["model"] for b in gen} == {"policy-x"}
    rows = load(tmp_path / "g")
    assert_oracle_labels(rows, 4)
    assert_generate_orientation(rows)
    assert {r["feedback_model"] for r in rows} == {"judge-y@rev2"} and {r["model"] for r in rows} == {"policy-x"}
    engine = json.loads((tmp_path / "g" / "manifest.json").read_text())["engine"]
    assert engine["model"] == "policy-x" and engine["reported_models"] == {"policy-x": 12}
    assert engine["feedback"]["model"] == "judge-y" and engine["feedback"]["reported_models"] == {"judge-y@rev2": 16}


def test_generate_openai_feedback_model_on_its_own_server(tmp_path, capsys):
    with OracleServer(("policy-x",)) as policy, OracleServer(("judge-z", "other")) as judge:
        rc = cli(*generate_args(write_prompts(tmp_path), tmp_path / "g", "--backend", "openai", "--base-url", policy.url,
                                "--label", "--ensemble", 1, "--feedback-base-url", judge.url + "/v1"))
        assert rc == 0, capsys.readouterr().err
        assert policy.requests("score") == [] and judge.requests("generate") == []
        assert len(judge.requests("score")) == 8 and {b["model"] for b in judge.requests("score")} == {"judge-z"}
    rows = load(tmp_path / "g")
    assert_oracle_labels(rows, 4)
    assert {r["feedback_model"] for r in rows} == {"judge-z"}  # the feedback server's first model


def test_generate_and_label_spread_over_several_servers(tmp_path, capsys):
    """--base-url A,B (or the flag repeated): every row done, both servers used, the same rows as one server."""
    prompts, pairs = write_prompts(tmp_path, 8), write_pairs(tmp_path, 12)
    with OracleServer(("policy-x",)) as a, OracleServer(("policy-x",)) as b:
        rc = cli(*generate_args(prompts, tmp_path / "g", "--backend", "openai", "--base-url", f"{a.url},{b.url}/v1",
                                "--label", "--ensemble", 2, "--max-concurrency", 4))
        assert rc == 0, capsys.readouterr().err
        per_server = [len(s.requests("generate")) + len(s.requests("score")) for s in (a, b)]
        hits = [len(s.hits) for s in (a, b)]  # with /v1/models and /tokenize
    assert sum(per_server) == 8 * 3 + 8 * 2 * 2 and min(per_server) >= 8, per_server
    rows = load(tmp_path / "g")
    assert_oracle_labels(rows, 8)
    assert_generate_orientation(rows)
    engine = json.loads((tmp_path / "g" / "manifest.json").read_text())["engine"]
    assert engine["base_url"] == f"{a.url},{b.url}" and engine["reported_models"] == {"policy-x": 56}
    assert [engine["servers"][s.url] for s in (a, b)] == [{"answered": n, "failed_attempts": 0} for n in hits]
    # the same run on one server gives the same rows
    with OracleServer(("policy-x",)) as one:
        assert cli(*generate_args(prompts, tmp_path / "g1", "--backend", "openai", "--base-url", one.url,
                                  "--label", "--ensemble", 2)) == 0
    key = lambda r: (r["id"], text(r["chosen"]), text(r["rejected"]), r["chosen_prob"])  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, load(tmp_path / "g1")))

    # label: a server down at start is named and left out; the flag repeated adds servers
    dead = closed_port_url()
    with OracleServer(("judge-y",)) as a, OracleServer(("judge-y",)) as b:
        capsys.readouterr()
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", a.url,
                 "--base-url", dead, "--base-url", b.url, "--ensemble", 2, "--max-concurrency", 4, *QUIET)
        err = capsys.readouterr().err
        assert rc == 0, err
        scored = [len(s.requests("score")) for s in (a, b)]
    assert f"cannot list the models of {dead}" in err and "left out of this run" in err
    assert sum(scored) == 12 * 2 * 2 and min(scored) >= 8, scored
    assert_oracle_labels(load(tmp_path / "l"), 12)
    engine = json.loads((tmp_path / "l" / "manifest.json").read_text())["engine"]
    assert "ConnectError" in engine["servers"][dead]["left_out"]
    # in a config file: one comma-separated string; a bad address is refused at once
    config = tmp_path / "fleet.yaml"
    config.write_text(f"engine:\n  backend: openai\n  base_url: {a.url},{b.url}\n")
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l2", "--config", config, "--ensemble", 1, *QUIET) == 2
    assert "cannot list the models" in capsys.readouterr().err  # both servers are gone by now
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l2", "--config", config, "--base-url", "localhost:8000") == 2
    assert "http:// or https://" in capsys.readouterr().err


def test_label_openai_backend_in_a_subprocess(tmp_path):
    """`python -m rlaif label --backend openai`, as a user types it."""
    pairs = write_pairs(tmp_path)
    with OracleServer(("judge-y",)) as srv:
        res = subprocess.run([sys.executable, "-m", "rlaif", "label", "--pairs", str(pairs), "--out", str(tmp_path / "l"),
                              "--backend", "openai", "--base-url", srv.url, "--ensemble", "2", "--quiet"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert len(srv.requests("score")) == 6 * 2 * 2
    assert re.search(r"agreement with reference labels: 100\.0% of 6 pairs", res.stdout), res.stdout
    rows = load(tmp_path / "l")
    assert_oracle_labels(rows, 6)
    assert {r["feedback_model"] for r in rows} == {"judge-y"}


def test_label_openai_feedback_model_names_the_judge(tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    with OracleServer(("policy-x", "judge-y"), reports={"judge-y": "judge-y@rev2"}) as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url,
                 "--served-model", "policy-x", "--feedback-model", "judge-y", "--ensemble", 2, *QUIET)
        assert rc == 0, capsys.readouterr().err
        score = srv.requests("score")
    assert len(score) == 24 and {b["model"] for b in score} == {"judge-y"}
    rows = load(tmp_path / "l")
    assert_oracle_labels(rows, 6)
    assert {r["feedback_model"] for r in rows} == {"judge-y@rev2"}
    manifest = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert manifest["settings"]["feedback_model"] == "judge-y"
    assert manifest["engine"]["reported_models"] == {"judge-y@rev2": 24}
    # --feedback-served-model wins over --feedback-model
    with OracleServer(("policy-x", "judge-y")) as srv:
        rc = cli("label", "--pairs", pairs, "--out", tmp_path / "l2", "--backend", "openai", "--base-url", srv.url,
                 "--feedback-model", "policy-x", "--feedback-served-model", "judge-y", "--ensemble", 1, *QUIET)
        assert rc == 0 and {b["model"] for b in srv.requests("score")} == {"judge-y"}


def test_openai_backend_problems_are_reported_at_start(tmp_path, capsys):
    prompts, pairs = write_prompts(tmp_path), write_pairs(tmp_path)
    with OracleServer(("policy-x",)) as srv:
        assert cli(*generate_args(prompts, tmp_path / "g", "--backend", "openai", "--base-url", srv.url, "--label",
                                  "--feedback-model", "judge-y")) == 2
        assert "does not serve a model named 'judge-y'" in capsys.readouterr().err
        assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", srv.url,
                   "--served-model", "nope", *QUIET) == 2
        assert "does not serve a model named 'nope'; it serves ['policy-x']" in capsys.readouterr().err
        assert srv.requests("generate") == srv.requests("score") == []
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "openai", "--base-url", closed_port_url(),
               "--max-retries", 0, *QUIET) == 2
    assert "cannot list the models" in capsys.readouterr().err
    # the feedback-server flags belong to the openai backend
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "fake", "--feedback-served-model", "x") == 2
    assert "are for --backend openai" in capsys.readouterr().err


def seed_reward(prompts, responses):
    """The request seed the oracle echoes in its answers ("#<seed>"), modulo 1000, as the reward."""
    import torch

    return torch.tensor([float(int(re.search(r"#(\d+)", r).group(1)) % 1000) for r in responses])


def test_bon_openai_backend(tmp_path, capsys):
    with OracleServer(("other", "policy-x")) as srv:  # --model names the served model when it is not 'default'
        rc = cli("bon", "--prompts", write_prompts(tmp_path, 3), "--out", tmp_path / "b", "--n", 3, "--backend", "openai",
                 "--base-url", srv.url, "--model", "policy-x", "--reward-fn", "test_cli_backends:seed_reward", *QUIET)
        assert rc == 0, capsys.readouterr().err
        gen = srv.requests("generate")
    assert len(gen) == 9 and {b["model"] for b in gen} == {"policy-x"} and len({b["seed"] for b in gen}) == 9
    sft = load(tmp_path / "b", "sft")
    assert len(sft) == 3
    for row in sft:
        seeds = [b["seed"] for b in gen if b["messages"][-1]["content"] == row["messages"][-2]["content"]]
        best = max(seeds, key=lambda x: x % 1000)
        assert len(seeds) == 3 and row["reward"] == best % 1000 and text(row["messages"]).endswith(f"#{best}")
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["engine"]["reported_models"] == {"policy-x": 9}


# ------------------------------------------------------------------ fake backend


def test_fake_backend_commands(repo_root, tmp_path, capsys):
    prompts = write_prompts(tmp_path)
    assert cli(*generate_args(prompts, tmp_path / "g", "--backend", "fake", "--label", "--ensemble", 1,
                              "--feedback-model", "judge-fake")) == 0
    rows = load(tmp_path / "g")
    assert len(rows) >= 1 and {r["feedback_model"] for r in rows} == {"judge-fake"} and {r["model"] for r in rows} == {"default"}
    engine = json.loads((tmp_path / "g" / "manifest.json").read_text())["engine"]
    assert engine["model"] == "default" and engine["feedback"]["model"] == "judge-fake"  # its own engine
    assert cli("label", "--pairs", write_pairs(tmp_path), "--out", tmp_path / "l", "--backend", "fake", "--ensemble", 1, *QUIET) == 0
    assert load(tmp_path / "l")["feedback_model"][0] == "default"
    assert cli("bon", "--prompts", prompts, "--out", tmp_path / "b", "--n", 2, "--backend", "fake",
               "--reward-fn", "test_cli_backends:seed_reward_or_length", *QUIET) == 0
    assert len(load(tmp_path / "b", "sft")) == 4
    capsys.readouterr()


def seed_reward_or_length(prompts, responses):
    import torch

    return torch.tensor([float(len(r)) for r in responses])


@pytest.mark.parametrize("backend", ["vllm", "transformers"])
def test_in_process_feedback_model_gets_its_own_engine(default_model, tmp_path, monkeypatch, backend):
    """A feedback model other than the policy starts a second engine of the same backend, and the
    two split vLLM's default memory share; the policy model as judge reuses the policy's engine.
    (Engines are recorded and replaced by fakes here; the real two-engine run is marked vllm below.)"""
    import rlaif.engine
    from rlaif.engine.fake import FakeEngine

    started = []

    def fake_create(model, engine, **settings):
        started.append((model, engine.backend, settings.get("share")))
        return FakeEngine(model=model)

    monkeypatch.setattr(rlaif.engine, "create_engine", fake_create)
    judge = model_alias(default_model, tmp_path / "judge")
    prompts = write_prompts(tmp_path, 2)
    assert cli(*generate_args(prompts, tmp_path / "two", "--backend", backend, "--label", "--ensemble", 1,
                              "--feedback-model", judge)) == 0
    assert started == [(default_model, backend, 0.5), (str(judge), backend, 0.5)]
    assert {r["feedback_model"] for r in load(tmp_path / "two")} == {str(judge)}
    started.clear()
    assert cli(*generate_args(prompts, tmp_path / "one", "--backend", backend, "--label", "--ensemble", 1,
                              "--feedback-model", "default")) == 0
    assert started == [(default_model, backend, 1.0)]
    assert {r["feedback_model"] for r in load(tmp_path / "one")} == {default_model}


def test_two_vllm_engines_split_the_default_memory_share(monkeypatch):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    import rlaif.engine.vllm_local as vllm_local
    from rlaif.engine import create_engine

    monkeypatch.setattr(vllm_local, "VLLMEngine", lambda model, settings, seed, show_progress: settings)
    default = vllm_local.CPU_KV_SHARE if current_platform.is_cpu() else 0.9
    assert create_engine("m", "vllm", share=0.5).gpu_memory_utilization == pytest.approx(default / 2)
    assert create_engine("m", "vllm").gpu_memory_utilization is None  # one engine: the platform default
    # a share or a KV-cache size the user gave is kept as given
    assert create_engine("m", "vllm", share=0.5, gpu_memory_utilization=0.3).gpu_memory_utilization == 0.3
    kept = create_engine("m", "vllm", share=0.5, kv_cache_gib=0.5)
    assert kept.gpu_memory_utilization is None and kept.kv_cache_gib == 0.5


# ------------------------------------------------------------------ train ppo


@pytest.mark.parametrize("backend", ["openai", "transformers", "fake"])
def test_train_ppo_refuses_other_backends_at_start(tmp_path, capsys, backend):
    server = ["engine.base_url=http://127.0.0.1:9"] if backend == "openai" else []  # else the missing URL is the complaint
    rc = cli("train", "ppo", f"engine.backend={backend}", *server, "model=default", "data=prompts/rlaif-prompts.jsonl",
             "reward_fn=test_cli_backends:seed_reward", f"runs_dir={tmp_path}", "name=ppo")
    assert rc == 2
    err = capsys.readouterr().err
    assert "in-process vLLM engine" in err and backend in err and "Traceback" not in err
    assert not (tmp_path / "ppo").exists()


# ------------------------------------------------------------------ transformers backend (default model)


def model_alias(default_model: str, folder: Path) -> Path:
    """Another folder holding the default model (links to its files): a second model path."""
    folder.mkdir()
    for f in Path(default_model).iterdir():
        (folder / f.name).symlink_to(f)
    return folder


TINY = ("--response-max-tokens", 8, "--critique-max-tokens", 8, "--revision-max-tokens", 8, "--dtype", "float32")


def test_generate_transformers_backend_with_labels_and_a_feedback_model(default_model, tmp_path, capsys):
    judge = model_alias(default_model, tmp_path / "judge")
    # two samples per prompt, labelled against each other: no critique stage (its few-shot prompts are long)
    rc = cli("generate", "--prompts", write_prompts(tmp_path, 2), "--out", tmp_path / "g", "--rounds", 0, "--samples", 2,
             "--backend", "transformers", *TINY, "--label", "--pairs", "samples-all", "--ensemble", 1, "--feedback-model", judge, *QUIET)
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["counts"]["label_pairs"] == 2 and manifest["counts"]["label_failed"] == 0
    engine = manifest["engine"]
    assert engine["backend"] == engine["feedback"]["backend"] == "HFEngine"
    assert engine["model"] == default_model and engine["feedback"]["model"] == str(judge)
    for r in load(tmp_path / "g"):
        assert r["feedback_model"] == str(judge) and r["model"] == default_model
        assert 0.5 <= r["chosen_prob"] <= 1.0


def test_label_and_bon_transformers_backend(default_model, tmp_path, capsys):
    assert cli("label", "--pairs", ROOT / "prompts" / "reference-pairs.jsonl", "--limit", 3, "--out", tmp_path / "l",
               "--backend", "transformers", "--dtype", "float32", "--ensemble", 1, *QUIET) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert manifest["counts"]["labelled"] == 3 and manifest["engine"]["backend"] == "HFEngine"
    assert set(load(tmp_path / "l")["feedback_model"]) == {default_model}
    assert cli("bon", "--prompts", write_prompts(tmp_path, 2), "--out", tmp_path / "b", "--n", 2, "--max-tokens", 6,
               "--backend", "transformers", "--reward-fn", "test_cli_backends:seed_reward_or_length", *QUIET) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["counts"]["responses"] == 4 and manifest["engine"]["backend"] == "HFEngine"


# ------------------------------------------------------------------ vllm backend (default model; slow)

VLLM_SMALL = ("--kv-cache-gib", 0.25, "--max-model-len", 2048, "--dtype", "float32")


@pytest.mark.vllm
def test_generate_vllm_backend_with_a_second_engine_for_the_feedback_model(default_model, tmp_path, capsys):
    judge = model_alias(default_model, tmp_path / "judge")
    rc = cli(*generate_args(write_prompts(tmp_path, 2), tmp_path / "g", *TINY[:-2], *VLLM_SMALL,
                            "--label", "--ensemble", 1, "--feedback-model", judge))
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    engine = manifest["engine"]
    assert engine["backend"] == engine["feedback"]["backend"] == "VLLMEngine"
    assert engine["model"] == default_model and engine["feedback"]["model"] == str(judge)
    assert manifest["counts"]["label_pairs"] == 2 and manifest["counts"]["label_failed"] == 0
    assert {r["feedback_model"] for r in load(tmp_path / "g")} == {str(judge)}


@pytest.mark.vllm
def test_label_vllm_backend_matches_transformers(default_model, tmp_path, capsys):
    """`rlaif label` on vLLM gives the judge's probabilities that plain transformers computes."""
    from rlaif.constitution import load_constitution
    from rlaif.engine.hf_local import HFEngine
    from rlaif.pipeline.judge import LabelSettings, label_pairs
    from rlaif.data.prompts import read_pairs

    src = ROOT / "prompts" / "reference-pairs.jsonl"
    assert cli("label", "--pairs", src, "--limit", 4, "--out", tmp_path / "l", "--ensemble", 2, *VLLM_SMALL, *QUIET) == 0, \
        capsys.readouterr().err
    judged = [json.loads(line) for f in sorted((tmp_path / "l" / "chunks").glob("[0-9]*[0-9].jsonl")) for line in f.read_text().splitlines()]
    assert {r["feedback_model"] for r in judged} == {default_model}
    hf = HFEngine(default_model, dtype="float32", show_progress=False)
    try:
        ref = label_pairs(hf, load_constitution("default"), read_pairs(src, limit=4), LabelSettings(ensemble=2, seed=0))
    finally:
        hf.close()
    assert [r["pair_id"] for r in judged] == [l.pair_id for l in ref]
    for r, l in zip(judged, ref):
        assert r["per_principle"].keys() == l.per_principle.keys()
        assert r["p_a"] == pytest.approx(l.p_a, abs=1e-3)
