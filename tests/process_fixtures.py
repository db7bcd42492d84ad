"""Tiny models for the process-reward tests: a byte-level BPE tokenizer (spaces belong to the token
after them, as in the default model's) with a ChatML template, and random-init 2-layer Llamas
(a causal LM, and a token classifier for process reward models). Built in well under a second."""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "user assistant system step one two three four five six seven eight nine ten",
    "The answer is 14. First add 3 + 4 = 7. Then double it: 7 * 2 = 14.",
    "good bad wrong right plus minus times equals total apples pears",
] * 4


def _byte_chars(codes) -> list[str]:
    """The characters GPT-2's byte-level alphabet uses for these byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[c] for c in codes]


def make_bpe_tokenizer():
    """Byte-level BPE over printable ASCII and the newline only, so that every token decodes to
    whole characters (a random model then never writes half a UTF-8 character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=_byte_chars([10, *range(32, 127)]), limit_alphabet=96, show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True, **kw)


def make_tiny_lm(folder: Path, seed: int = 0, init: float = 0.02) -> Path:
    """A random-init causal LM; ``init`` (the weights' std) 0.5 makes its greedy text vary with the
    context instead of repeating one token."""
    import torch
    from transformers import LlamaForCausalLM

    tok = make_bpe_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(tok, initializer_range=init)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ stepwise data with a known rule
RULE_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "apples", "pears", "total"]
WRONG = "bad"
"""A step holding this word is wrong; every other step is right (the rule the PRM tests teach)."""


def rule_solution(rng, n_steps: int | None = None, p_wrong: float = 0.3) -> tuple[list[str], list[bool]]:
    """Steps of 1-4 words; each holds :data:`WRONG` at a random place with probability ``p_wrong``."""
    steps, labels = [], []
    for _ in range(n_steps or rng.randint(2, 5)):
        words = [rng.choice(RULE_WORDS) for _ in range(rng.randint(1, 4))]
        wrong = rng.random() < p_wrong
        if wrong:
            words.insert(rng.randint(0, len(words)), WRONG)
        steps.append(" ".join(words))
        labels.append(not wrong)
    return steps, labels


def rule_rows(n: int, seed: int = 0) -> list[dict]:
    """TRL stepwise rows (string prompt, steps, bool labels) following the rule."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = rule_solution(rng)
        rows.append({"prompt": f"add {rng.choice(RULE_WORDS)} and {rng.choice(RULE_WORDS)}", "completions": steps, "labels": labels})
    return rows
