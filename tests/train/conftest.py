"""Tiny offline fixtures: a WordLevel ChatML tokenizer, a random-init Llama, and rlaif-style data."""
import random

import pytest

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ["system", "user", "assistant"] + [f"w{i}" for i in range(120)] + ["good", "bad", "be", "kind"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def _words(rng, lo, hi, n):
    return " ".join(f"w{rng.randrange(lo, hi)}" for _ in range(n))


def preference_rows(n, seed=0):
    """Chosen answers use words w0-w59 and end in 'good'; rejected use w60-w119 and end in 'bad'."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": _words(rng, 0, 120, rng.randint(2, 12))}]
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": _words(rng, 0, 60, rng.randint(1, 10)) + " good"}],
            "rejected": [{"role": "assistant", "content": _words(rng, 60, 120, rng.randint(1, 10)) + " bad"}],
            "chosen_prob": round(rng.uniform(0.6, 1.0), 3),
            "margin": 0.0,
            "prompt_id": f"p{i}",
            "constitution_hash": "abc123",
            "principle_ids": ["be-kind"],
        })
    return rows


def sft_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": _words(rng, 0, 120, rng.randint(2, 10))},
                {"role": "assistant", "content": _words(rng, 0, 60, rng.randint(1, 12)) + " good"}]
        if i % 3 == 0:
            msgs.insert(0, {"role": "system", "content": "be kind"})
        rows.append({"messages": msgs, "prompt_id": f"p{i}", "constitution_hash": "abc123"})
    return rows


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory):
    """An rlaif generate run folder: sft/ and preferences/ saved with save_to_disk, plus jsonl copies."""
    import json

    from datasets import Dataset

    d = tmp_path_factory.mktemp("gen-run")
    prefs, sft = preference_rows(240), sft_rows(160)
    Dataset.from_list(prefs).save_to_disk(str(d / "preferences"))
    Dataset.from_list(sft).save_to_disk(str(d / "sft"))
    (d / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    return d


# ---------------------------------------------------------------- RL tests (PPO, online DPO, GRPO)
# Module-scoped: each test module that uses them gets its own tiny chat model and engine.


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    from test_ppo import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def engine(tiny_chat):
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine

    e = VLLMEngine(str(tiny_chat), EngineConfig(max_model_len=256, kv_cache_gib=0.25, dtype="float32"), show_progress=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    """48 prompts of 2-8 words from the tiny tokenizer's vocabulary."""
    import json

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": " ".join(f"w{rng.randrange(120)}" for _ in range(rng.randint(2, 8)))} for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def engine_logps(engine, seq, start):
    """The engine's log-probs of ``seq[start:]`` given what comes before (vLLM's prompt log-probs)."""
    import torch

    return torch.tensor(engine.sequence_logprobs([seq], [start])[0])


def trainer_logps(model, seq, start):
    """The trainer model's log-probs of ``seq[start:]`` given what comes before, in float32."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, start - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(seq[start:])[:, None])[:, 0]
