"""``rlaif publish RUN --out DIR [--push HUB_ID]``: a folder ``datasets.load_dataset`` reads, with a card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
import yaml

from rlaif.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A labelled generate run (fake backend) with a judge card and four human ratings (three agree)."""
    from rlaif.review.data import Review

    d = tmp_path_factory.mktemp("pub") / "run"
    assert cli("generate", "--prompts", ROOT / "prompts" / "rlaif-prompts.jsonl", "--out", d, "--backend", "fake", "--label",
               "--ensemble", 1, "--limit", 8, "--quiet") == 0
    (d / "judge_card.json").write_text(json.dumps({"judge": "fake-model", "calibration": {"brier": 0.123}}))
    ids = [json.loads(x)["id"] for x in (d / "preferences.jsonl").read_text().splitlines()][:4]
    rows = [Review(f"sub-{i:06d}", "ann", "2026-01-01T00:00:00", pid, 9 - likert, "chosen", likert).to_row()
            for i, (pid, likert) in enumerate(zip(ids, (7, 6, 8, 2)))]
    (d / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_every_config_loads_and_the_card_validates(run, tmp_path, capsys):
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    out = tmp_path / "pub"
    assert cli("publish", run, "--out", out, "--license", "apache-2.0", "--language", "en", "--name", "Demo data") == 0
    assert f"datasets.load_dataset('{out}'" in capsys.readouterr().out
    for name in ("sft", "preferences"):
        loaded = datasets.load_dataset(str(out), name, split="train")
        original = datasets.load_from_disk(str(run / name))
        assert loaded.to_list() == original.to_list() and len(loaded) == 8
    with pytest.raises(ValueError):
        datasets.load_dataset(str(out), "steps", split="train")  # no step labels in this run: no such config

    text = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    card = DatasetCard.load(out / "README.md", ignore_metadata_errors=False)
    assert card.data.license == "apache-2.0" and card.data.language == ["en"] and card.data.pretty_name == "Demo data"
    assert card.data.task_categories == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    allowed_sizes = re.search(r"size_categories.*?Options are: (.*?)\.\n", DatasetCardData.__doc__, re.S).group(1)
    assert f"'{meta['size_categories'][0]}'" in allowed_sizes  # one of the Hub's bins, as huggingface_hub lists them
    configs = MetadataConfigs.from_dataset_card_data(card.data)  # datasets' own check of the configs section
    assert set(configs) == {"sft", "preferences"} and configs.get_default_config_name() == "sft"

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["constitution"]["sha256"] in text
    for rel, sha in manifest["constitution"]["files"].items():
        assert f"`{rel}` sha256 `{sha}`" in text and (out / "provenance" / rel).read_text() == (run / rel).read_text()
    assert '"brier": 0.123' in text and (out / "provenance" / "judge_card.json").is_file()
    # three of the four ratings preferred the AI's chosen answer; Wilson's interval of 3 of 4 by hand: 0.301 to 0.954
    assert "75.0% of 4 [95% interval 30.1%, 95.4%] ratings" in text
    assert "orders agree" in text and "longer chosen" in text  # the judge's diagnostics
    assert "`ai` (8 pairs)" in text and "the assistant's answer is" in text
    assert str(ROOT) not in text  # no path of this machine in a card meant for sharing


def test_trl_trainers_accept_the_loaded_splits(run, tmp_path, default_model):
    """TRL's DPOTrainer and SFTTrainer tokenise the published splits (a tiny random model with the default tokenizer)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    out = tmp_path / "pub"
    assert cli("publish", run, "--out", out) == 0
    tok = AutoTokenizer.from_pretrained(default_model)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    common = dict(output_dir=str(tmp_path / "t"), report_to=[], max_length=512, use_cpu=True, save_strategy="no")
    dpo = DPOTrainer(model=str(tmp_path / "tiny"), args=DPOConfig(**common), processing_class=tok,
                     train_dataset=datasets.load_dataset(str(out), "preferences", split="train"))
    assert len(dpo.train_dataset) == 8 and {"chosen_ids", "rejected_ids"} <= set(dpo.train_dataset.column_names)
    sft = SFTTrainer(model=str(tmp_path / "tiny"), args=SFTConfig(**common), processing_class=tok,
                     train_dataset=datasets.load_dataset(str(out), "sft", split="train"))
    assert len(sft.train_dataset) == 8 and "input_ids" in sft.train_dataset.column_names


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records calls; ``fail`` makes the upload raise."""

    calls: list = []
    fail = False

    def __init__(self, *a, **kw):
        pass

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        if FakeHfApi.fail:
            raise ConnectionError("the Hub cannot be reached")
        FakeHfApi.calls.append(("upload_folder", kw["repo_id"], {**kw, "files": sorted(
            str(p.relative_to(kw["folder_path"])) for p in Path(kw["folder_path"]).rglob("*") if p.is_file())}))


def test_push_uploads_the_folder_with_huggingface_hub(run, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls, FakeHfApi.fail = [], False
    out = tmp_path / "pub"
    assert cli("publish", run, "--out", out, "--push", "me/my-data", "--private") == 0
    assert "pushed: https://huggingface.co/datasets/me/my-data" in capsys.readouterr().out
    (c_name, c_id, c_kw), (u_name, u_id, u_kw) = FakeHfApi.calls
    assert (c_name, c_id, c_kw) == ("create_repo", "me/my-data", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert (u_name, u_id, u_kw["repo_type"], u_kw["folder_path"]) == ("upload_folder", "me/my-data", "dataset", str(out))
    assert {"README.md", "provenance/manifest.json"} <= set(u_kw["files"])
    assert {f.split("/")[0] for f in u_kw["files"] if f.endswith(".parquet")} == {"sft", "preferences"}
    FakeHfApi.fail = True
    assert cli("publish", run, "--out", out, "--overwrite", "--push", "me/my-data") == 4
    err = capsys.readouterr().err
    assert "the upload to me/my-data failed" in err and "is complete" in err and (out / "README.md").is_file()


def test_two_folders_of_the_same_name_load_their_own_rows(run, tmp_path):
    """datasets caches a local folder's config by its name and file paths: the content hash in the file
    name keeps a second folder called "pub" (or a republished one) from reading the first one's rows."""
    assert cli("publish", run, "--out", tmp_path / "a" / "pub") == 0
    assert len(datasets.load_dataset(str(tmp_path / "a" / "pub"), "preferences", split="train")) == 8
    small = tmp_path / "small"
    assert cli("label", "--pairs", ROOT / "prompts" / "reference-pairs.jsonl", "--out", small, "--backend", "fake",
               "--ensemble", 1, "--limit", 3, "--quiet") == 0
    assert cli("publish", small, "--out", tmp_path / "b" / "pub") == 0
    assert len(datasets.load_dataset(str(tmp_path / "b" / "pub"), "preferences", split="train")) == 3


def test_label_run_card_and_clear_errors(tmp_path, capsys):
    pairs = ROOT / "prompts" / "reference-pairs.jsonl"
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "l", "--backend", "fake", "--ensemble", 1, "--limit", 12, "--quiet") == 0
    assert cli("publish", tmp_path / "l", "--out", tmp_path / "pub") == 0
    text = (tmp_path / "pub" / "README.md").read_text()
    assert "Agreement with reference labels" in text and "No human ratings" in text
    o = json.loads((tmp_path / "l" / "manifest.json").read_text())["agreement"]["overall"]
    for stratum in ("longer", "shorter"):  # both length strata, each with its count
        x = o["by_length"][stratum]
        assert f"the {stratum} one {100 * x['agreement']:.1f}% of {x['n']} [95% interval" in text
    if o["length_controlled_agreement"] is not None:
        assert f"length-controlled {100 * o['length_controlled_agreement']:.1f}%" in text
    assert [c["config_name"] for c in yaml.safe_load(text.split("---")[1])["configs"]] == ["preferences"]
    capsys.readouterr()
    assert cli("publish", tmp_path / "l", "--out", tmp_path / "pub") == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli("publish", tmp_path / "nothing", "--out", tmp_path / "p2") == 2
    assert "not a finished run folder" in capsys.readouterr().err
    assert cli("publish", tmp_path / "l", "--out", tmp_path / "l" / "inside") == 2
    assert "outside the run folder" in capsys.readouterr().err


def test_the_card_splits_human_agreement_by_length(tmp_path):
    """Ratings of the pairs drawn at random for review that agree with the AI exactly where its chosen
    answer is the longer one: the card gives 100% in that stratum, 0% in the other, 50% length-controlled."""
    from rlaif.review.data import Review
    from rlaif.review.queue import in_random_stratum

    d = tmp_path / "l"
    assert cli("label", "--pairs", ROOT / "prompts" / "reference-pairs.jsonl", "--out", d, "--backend", "fake", "--ensemble", 1,
               "--quiet") == 0
    prefs = [json.loads(x) for x in (d / "preferences.jsonl").read_text().splitlines()]
    drawn = [p for p in prefs if in_random_stratum(p["id"])]
    size = {p["id"]: (len(p["chosen"][-1]["content"]), len(p["rejected"][-1]["content"])) for p in drawn}
    longer = sum(a > b for a, b in size.values())
    shorter = sum(a < b for a, b in size.values())
    assert longer and shorter
    rows = [Review(f"sub-{i:06d}", "ann", "2026-01-01T00:00:00", p["id"], 1 if size[p["id"]][0] > size[p["id"]][1] else 8, "chosen",
                   8 if size[p["id"]][0] > size[p["id"]][1] else 1).to_row() for i, p in enumerate(drawn)]
    (d / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli("publish", d, "--out", tmp_path / "pub") == 0
    text = " ".join((tmp_path / "pub" / "README.md").read_text().split())
    assert "On the pairs drawn at random for review: length-controlled 50.0%" in text
    assert f"where the AI's chosen answer is the longer one 100.0% of {longer} [" in text
    assert f"where it is the shorter one 0.0% of {shorter} [95% interval 0.0%, " in text
