"""A trained outcome reward model as a reward: one score per (prompt, response)."""
from __future__ import annotations

from typing import Sequence

import torch

from rlaif.data.templates import encode_prompt_completion

from .functions import Messages


def pick_device(spec: str = "auto") -> str:
    """``--reward-device``: "auto" is the first GPU when there is one, else the CPU."""
    return spec if spec != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


class SequenceClassifierReward:
    """Scores (prompt, response) with a sequence-classification model with one label.

    The conversation ``prompt + [assistant: response]`` is rendered with the reward
    model's own chat template and tokenised exactly as ``rlaif train rm`` tokenised its
    training pairs; the score is the head's output at the last non-padding token (the
    model's own pooling, with right padding and ``pad_token_id`` set).
    """

    def __init__(self, path: str, device: str | torch.device = "cpu", batch_size: int = 8, max_length: int = 2048,
                 trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, dtype=dtype, trust_remote_code=trust_remote_code
        ).to(device).eval().requires_grad_(False)
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {self.path} has {self.model.config.num_labels} labels; expected 1")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, prompt: Messages, response: str) -> list[int]:
        p, c = encode_prompt_completion(self.tokenizer, list(prompt), [{"role": "assistant", "content": response}])
        ids = p + c
        return ids[-self.max_length:]  # keep the end: the score is read at the last token

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Messages], responses: Sequence[str]) -> torch.Tensor:
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        out = torch.zeros(len(seqs), dtype=torch.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        pad = self.model.config.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in idx], device=self.device)
            attn = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in idx], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            out[idx] = logits[:, 0].float().cpu()
        return out
