"""One row schema for every dataset rlaif writes (rlaif/data/rows.py).

Each producer is run through the command line a user types (fake backend), and its datasets
are checked against the shared core: the same Arrow types for the conversational columns,
one assistant turn in ``chosen``/``rejected`` (or at the end of ``messages``), the prompt's
turns unchanged, a known ``label_source``, and rows the trainers' readers accept.
"""

from __future__ import annotations

import datasets
import pytest
from test_cli_backends import QUIET, cli, generate_args, write_pairs, write_prompts

from rlaif.data import rows
from rlaif.train.data import to_preference_example

SOURCES = {"g": "revision", "gl": "ai", "l": "ai", "b": "reward-model"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    prompts = write_prompts(d)
    assert cli(*generate_args(prompts, d / "g", "--backend", "fake")) == 0
    assert cli(*generate_args(prompts, d / "gl", "--backend", "fake", "--label", "--ensemble", 1)) == 0
    assert cli("label", "--pairs", write_pairs(d), "--out", d / "l", "--backend", "fake", "--ensemble", 1, *QUIET) == 0
    import rlaif.engine.fake

    varied = rlaif.engine.fake.FakeEngine
    with pytest.MonkeyPatch.context() as mp:  # samples that differ by seed, so best and worst differ
        mp.setattr(rlaif.engine.fake, "FakeEngine",
                   lambda model=None, **kw: varied(script=lambda req, sampling: "answer " + "x" * (req.seed % 7)))
        assert cli("bon", "--prompts", prompts, "--out", d / "b", "--n", 3, "--backend", "fake",
                   "--reward-fn", "test_cli_backends:seed_reward_or_length", *QUIET) == 0
    return d


def _prompt_texts(path) -> set[str]:
    import json

    return {json.loads(line)["prompt"] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("run", sorted(SOURCES))
def test_preference_datasets_share_the_core(outputs, run):
    ds = datasets.load_from_disk(str(outputs / run / "preferences"))
    assert len(ds) >= 1
    want = rows.preference_features()
    for col in rows.PREFERENCE_CORE:
        assert ds.features[col] == want[col], (run, col)
    asked = _prompt_texts(outputs / "prompts.jsonl") | {f"Question {i}?" for i in range(6)}
    for r in ds:
        assert r["label_source"] == SOURCES[run]
        for side in ("chosen", "rejected"):
            assert len(r[side]) == 1 and r[side][0]["role"] == "assistant", (run, side)
        assert r["prompt"][-1]["role"] == "user" and r["prompt"][-1]["content"] in asked
        assert r["chosen"] != r["rejected"]
        ex = to_preference_example(r)
        assert ex.chosen == r["chosen"] and ex.rejected == r["rejected"] and ex.prompt == r["prompt"]


@pytest.mark.parametrize("run", ["g", "b"])
def test_sft_datasets_share_the_core(outputs, run):
    ds = datasets.load_from_disk(str(outputs / run / "sft"))
    assert len(ds) >= 1 and ds.features["messages"] == rows.sft_features()["messages"]
    for r in ds:
        *prompt, last = r["messages"]
        assert last["role"] == "assistant" and prompt and prompt[-1]["role"] == "user"


def test_row_builders():
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    r = rows.preference_row(prompt, "good", "bad", "ai", id="x")
    assert r == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "good"}],
                 "rejected": [{"role": "assistant", "content": "bad"}], "label_source": "ai", "id": "x"}
    assert r["prompt"] is not prompt and r["prompt"][0] is not prompt[0]  # copies, not aliases
    assert rows.sft_row(prompt, "ok")["messages"] == [*prompt, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match="label_source"):
        rows.preference_row(prompt, "a", "b", "human?")
    assert set(rows.preference_features({"extra": datasets.Value("int64")})) == {*rows.PREFERENCE_CORE, "extra"}
