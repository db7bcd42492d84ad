"""A process reward model (PRM): the probability that each step of a solution is correct.

The model is a token classifier with two labels (``AutoModelForTokenClassification``,
``num_labels=2``) on a causal-LM backbone, as TRL's PRM trainer built it: the prompt is rendered
with the chat template (generation prompt included), every step is followed by the step
separator (``"\\n"`` by default), and the step's score is read at the last token of step +
separator: ``P(correct) = softmax(logits)[1]`` there (:func:`encode_steps` is the one layout,
for training and scoring alike). ``rlaif train prm`` writes ``rlaif_prm.json`` beside the
weights with the separator and the step splitter its data was cut with, so that a response is
cut and laid out at scoring time exactly as the training steps were.

A response's steps give one number by :func:`aggregate`: ``min`` (Lightman et al. 2023: the
weakest step), ``prod`` (Lightman et al.: the probability that every step is correct) or
``last`` (the final step's score). For dense rewards (PPO and GRPO),
:meth:`ProcessRewardModel.step_scores` gives each step's score and its character span, and
:func:`token_positions` finds the policy token on which each step ends.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from rlaif.data.steps import StepSplitter, splitter_from
from rlaif.data.templates import render_chat, text_ids

from .functions import Messages

PRM_CONFIG = "rlaif_prm.json"
AGGREGATES = ("min", "prod", "last")
DEFAULT_SEPARATOR = "\n"


def as_messages(prompt: str | Messages) -> Messages:
    """A prompt as a conversation (a string is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_steps(tok, prompt: str | Messages, steps: Sequence[str], separator: str = DEFAULT_SEPARATOR,
                 max_length: int | None = None, max_prompt_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt + steps, and the index of each step's last token (where its score is read).

    Each step is tokenised as ``step + separator`` after the prompt rendered with the generation
    prompt. The prompt keeps its last ``max_prompt_length`` tokens; steps that would take the
    sequence past ``max_length`` are left out (``len(ends) < len(steps)`` then).
    """
    ids = text_ids(tok, render_chat(tok, as_messages(prompt), add_generation_prompt=True))
    if max_prompt_length is not None:
        ids = ids[-max_prompt_length:]
    ends: list[int] = []
    for step in steps:
        piece = text_ids(tok, step + separator)
        if not piece or (max_length is not None and len(ids) + len(piece) > max_length):
            break
        ids += piece
        ends.append(len(ids) - 1)
    return ids, ends


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """One number for a solution from its step scores; a solution without steps gets 0."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, not {how!r}")
    if not scores:
        return 0.0
    if how == "min":
        return float(min(scores))
    if how == "last":
        return float(scores[-1])
    return float(math.prod(scores))


def token_positions(tokenizer, response_ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """For each character offset in ``char_ends``, the index of the response token whose text reaches it.

    The response text is ``tokenizer.decode(response_ids, skip_special_tokens=True)`` (what the engine
    returned); the token of a step's last character is the first token ``k`` with
    ``len(decode(ids[:k + 1])) >= end``. Offsets past the text map to the last token.
    """
    from bisect import bisect_left

    # reach[k]: characters decoded from the first k + 1 tokens (never decreasing)
    reach = [len(tokenizer.decode(list(response_ids[: i + 1]), skip_special_tokens=True)) for i in range(len(response_ids))]
    return [min(bisect_left(reach, end), max(len(reach) - 1, 0)) for end in char_ends]


def read_prm_config(path: str | Path) -> dict[str, Any]:
    """The separator and splitter a PRM folder records (defaults where it records none)."""
    f = Path(path) / PRM_CONFIG
    raw = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    return {"separator": str(raw.get("separator", DEFAULT_SEPARATOR)), "splitter": splitter_from(raw.get("splitter"))}


def write_prm_config(path: str | Path, separator: str, splitter: StepSplitter, **extra: Any) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / PRM_CONFIG).write_text(json.dumps({"separator": separator, "splitter": splitter.describe(), **extra},
                                                    indent=2) + "\n", encoding="utf-8")


class ProcessRewardModel:
    """Scores steps with a trained PRM folder (from ``rlaif train prm``); as a reward, ``__call__``
    gives each response's :func:`aggregate` of its step scores."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 8, max_length: int = 2048,
                 aggregate: str = "min", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, not {aggregate!r}")
        self.path, self.how = str(path), aggregate
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForTokenClassification.from_pretrained(
            self.path, dtype=torch.float32, trust_remote_code=trust_remote_code).to(device).eval().requires_grad_(False)
        if self.model.config.num_labels != 2:
            raise ValueError(f"process reward model {self.path} has {self.model.config.num_labels} labels; expected 2")
        cfg = read_prm_config(self.path)
        self.separator, self.splitter = cfg["separator"], cfg["splitter"]
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length

    def step_probs(self, prompts: Sequence[str | Messages], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(correct) of every step of every solution (steps past ``max_length`` get none)."""
        import torch

        enc = [encode_steps(self.tokenizer, p, s, self.separator, self.max_length) for p, s in zip(prompts, steps)]
        out: list[list[float]] = [[] for _ in enc]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = [i for i in order[start : start + self.batch_size] if enc[i][1]]
                if not idx:
                    continue
                width = max(len(enc[i][0]) for i in idx)
                ids = torch.tensor([enc[i][0] + [pad] * (width - len(enc[i][0])) for i in idx], device=self.device)
                attn = torch.tensor([[1] * len(enc[i][0]) + [0] * (width - len(enc[i][0])) for i in idx], device=self.device)
                probs = self.model(input_ids=ids, attention_mask=attn).logits.float().softmax(-1)[..., 1].cpu()
                for row, i in enumerate(idx):
                    out[i] = [float(probs[row, e]) for e in enc[i][1]]
        return out

    def step_scores(self, prompts: Sequence[str | Messages], responses: Sequence[str]) -> list[list[tuple[float, tuple[int, int]]]]:
        """Each response cut with the PRM's splitter: ``(P(correct), (start, end))`` per scored step."""
        spans = [self.splitter.spans(r) for r in responses]
        probs = self.step_probs(prompts, [[r[a:b] for a, b in sp] for r, sp in zip(responses, spans)])
        return [list(zip(p, sp)) for p, sp in zip(probs, spans)]

    def __call__(self, prompts: Sequence[Messages], responses: Sequence[str]):
        import torch

        scored = self.step_scores(prompts, responses)
        return torch.tensor([aggregate([p for p, _ in s], self.how) for s in scored], dtype=torch.float32)
