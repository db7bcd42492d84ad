"""Best-of-N sampling: the choice rules, the run folder and its rows (scripted engine), and the
command end to end through real vLLM with a tiny policy and a tiny reward model."""
import json

import datasets
import pytest
import torch

from rlaif.pipeline import bon
from rlaif.cli import bon as bon_cli
from rlaif.pipeline.bon import BonSettings, Candidate, pick
from rlaif.engine.base import SamplingConfig
from rlaif.engine.fake import FakeEngine
from rlaif.data.prompts import read_prompts


def C(sample, text, reward, finish="stop"):
    return Candidate(sample, text, finish, len(text.split()), reward)


def test_pick_best_and_worst():
    best, worst = pick([C(0, "a", 0.1), C(1, "b", 0.9), C(2, "c", -0.3), C(3, "d", 0.5)])
    assert (best.sample, worst.sample) == (1, 2)


def test_pick_rules():
    # truncated responses take no part unless asked; errors (reward None) and empty texts never do
    cands = [C(0, "long", 5.0, "length"), C(1, "", 4.0), C(2, "x", None, "error"), C(3, "ok", 1.0), C(4, "meh", 0.0)]
    best, worst = pick(cands)
    assert (best.sample, worst.sample) == (3, 4)
    best, worst = pick(cands, keep_truncated=True)
    assert (best.sample, worst.sample) == (0, 4)
    # ties go to the lower sample; identical texts or a small margin give no pair
    best, worst = pick([C(0, "a", 1.0), C(1, "b", 1.0)])
    assert best.sample == 0 and worst is None
    assert pick([C(0, "same", 2.0), C(1, "same", 1.0)])[1] is None
    assert pick([C(0, "a", 1.0), C(1, "b", 0.8)], min_margin=0.5)[1] is None
    assert pick([C(0, "a", None, "error")]) == (None, None)


def _prompts(tmp_path, n=5):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"w{i} w{i + 1}", "category": "c"}) + "\n" for i in range(n)))
    return path


def digit_sum(prompts, responses):
    """A reward the scripted replies make easy to predict: the sum of the digits in the text."""
    return torch.tensor([float(sum(int(ch) for ch in r if ch.isdigit())) for r in responses])


def test_run_bon_rows_and_resume(tmp_path):
    prompts = read_prompts(_prompts(tmp_path))
    engine = FakeEngine(script=lambda req, sampling: f"answer {req.seed % 1000}")
    s = BonSettings(n=4, sampling=SamplingConfig(1.0, 1.0, 16), seed=3, chunk_size=2)
    out = tmp_path / "bon"
    m = bon.run_bon(prompts, lambda: engine, digit_sum, s, str(out), "fake-model", "digit_sum", show_progress=False,
                    log=lambda _: None)
    assert m["counts"]["prompts"] == 5 and m["counts"]["responses"] == 20 and m["counts"]["sft_rows"] == 5
    assert [c for c in engine.calls if c[0] == "best-of-n"] == [("best-of-n", 8), ("best-of-n", 8), ("best-of-n", 4)]
    chunks = [json.loads(l) for f in sorted((out / "chunks").glob("[0-9]*.jsonl")) for l in f.read_text().splitlines()]
    sft = datasets.load_from_disk(str(out / "sft"))
    prefs = datasets.load_from_disk(str(out / "preferences"))
    for row, chunk, pref in zip(sft, chunks, prefs):
        rewards = [c["reward"] for c in chunk["candidates"]]
        texts = [c["text"] for c in chunk["candidates"]]
        assert row["prompt_id"] == chunk["prompt_id"] == pref["prompt_id"]
        assert row["messages"][:-1] == chunk["prompt"] == pref["prompt"]
        assert row["messages"][-1] == {"role": "assistant", "content": texts[rewards.index(max(rewards))]}
        assert row["reward"] == max(rewards) == pref["chosen_reward"]
        assert pref["rejected"] == [{"role": "assistant", "content": texts[rewards.index(min(rewards))]}]
        assert pref["reward_gap"] == pytest.approx(max(rewards) - min(rewards))
        assert "margin" not in pref  # margin means the labeller's 0-3 level only
        assert row["mean_reward"] == pytest.approx(sum(rewards) / 4)
        assert row["category"] == "c" and row["n"] == 4 and row["reward_model"] == "digit_sum"
    # the rows load in the trainers' readers
    from rlaif.train.data import to_preference_example

    ex = to_preference_example(prefs[0])
    assert ex.chosen_prob == 1.0 and ex.chosen[0]["role"] == "assistant" and ex.margin == 0.0
    # the same settings again: nothing to do
    again = bon.run_bon(prompts, lambda: pytest.fail("no engine needed"), digit_sum, s, str(out), "fake-model", "digit_sum",
                        show_progress=False, log=lambda _: None)
    assert again["fingerprint"] == m["fingerprint"]


def test_main_with_fake_backend_and_reward_fn(tmp_path, capsys):
    rc = bon_cli.main(["--prompts", str(_prompts(tmp_path, 3)), "--out", str(tmp_path / "o"), "--n", "3", "--backend", "fake",
                   "--model", "fake", "--reward-fn", "test_bon:digit_sum", "--quiet"])
    assert rc == 0
    assert (tmp_path / "o" / "manifest.json").exists() and "sft rows 3" in capsys.readouterr().out
    assert bon_cli.main(["--prompts", str(_prompts(tmp_path, 3)), "--out", str(tmp_path / "p"), "--backend", "fake"]) == 2


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_models(folder):
    """A 2-layer Llama chat model over a 131-word vocabulary and a reward model of the same shape."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    words += [f"w{i}" for i in range(120)] + ["good", "bad", "be", "kind"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, intermediate_size=256, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder / "policy")
    cfg.num_labels = 1
    LlamaForSequenceClassification(cfg).save_pretrained(folder / "rm")
    for sub in ("policy", "rm"):
        tok.save_pretrained(folder / sub)
    return folder / "policy", folder / "rm"


@pytest.mark.vllm
def test_bon_command_with_vllm_and_reward_model(tmp_path, capsys):
    from rlaif.reward.models import SequenceClassifierReward

    policy, rm = make_tiny_models(tmp_path)
    out = tmp_path / "bon"
    rc = bon_cli.main(["--prompts", str(_prompts(tmp_path, 4)), "--out", str(out), "--n", "4", "--model", str(policy),
                   "--reward-model", str(rm), "--max-tokens", "12", "--keep-truncated", "--max-model-len", "256",
                   "--kv-cache-gib", "0.25", "--dtype", "float32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["backend"] == "VLLMEngine" and manifest["counts"]["responses"] == 16
    sft = datasets.load_from_disk(str(out / "sft"))
    prefs = datasets.load_from_disk(str(out / "preferences"))
    assert len(sft) == 4 and 1 <= len(prefs) <= 4
    scorer = SequenceClassifierReward(str(rm))
    for p in prefs:
        got = scorer([p["prompt"]] * 2, [p["chosen"][0]["content"], p["rejected"][0]["content"]])
        assert got.tolist() == pytest.approx([p["chosen_reward"], p["rejected_reward"]], rel=1e-5, abs=1e-6)
        assert p["chosen_reward"] > p["rejected_reward"]
    assert manifest["counts"]["mean_best_reward"] >= manifest["counts"]["mean_reward"]
