"""Rollouts for RL: weight sync to the engine, rewards, and batching.

* Samples come from the engine (``engine.sample_tokens``, see :class:`rlaif.engine.base.RLEngine`):
  token ids plus the log-probability of every sampled token, one seeded request per response.
* A reward function takes the prompts (message lists) and the response texts and
  returns one score per response: :class:`SequenceClassifierReward` wraps a reward model
  from ``rlaif train rm`` (or any Hugging Face sequence-classification model with one
  label); :func:`load_reward_fn` loads a ``module:function`` for programmatic rewards.
* :func:`collate` lays the rollouts out for the trainer and :func:`response_logps` /
  :func:`response_values` read the policy's log-probs and the critic's values at the
  response tokens.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch

from rlaif.engine.base import TokenSample

from .losses import token_logps
from .rl_losses import entropy_from_logits

Messages = list[dict[str, Any]]
RewardFn = Callable[[Sequence[Messages], Sequence[str]], "torch.Tensor | Sequence[float]"]


# ------------------------------------------------------------------ weight sync
def sync_weights(engine, model) -> float:
    """Load ``model``'s weights into the running engine (no restart, nothing on disk); returns seconds.

    ``engine.update_weights`` hands the tensors over through shared memory and has the
    workers reload them in place (tied LM heads included, see rlaif.engine.vllm_worker).
    """
    return engine.update_weights(engine_weights(model))


def engine_weights(model) -> list[tuple[str, "torch.Tensor"]]:
    """The policy's weights under the base model's Hugging Face names, as the engine loads them.

    A peft LoRA model is merged on the fly (``W + delta`` per adapted layer, computed without
    touching the model, so repeated syncs do not drift) and its adapter tensors are left out.
    """
    model = getattr(model, "module", model)
    if not hasattr(model, "get_base_model"):
        return list(model.state_dict().items())
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer) and not getattr(mod, "disable_adapters", False):
            for adapter in mod.active_adapters:
                if adapter in mod.lora_A:
                    d = mod.get_delta_weight(adapter)
                    deltas[name] = deltas[name] + d if name in deltas else d
    out = []
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        owner = clean.rsplit(".", 1)[0]
        if clean.endswith(".weight") and owner in deltas:
            value = value + deltas[owner].to(value.dtype)
        out.append((clean, value))
    return out


# ------------------------------------------------------------------ rewards
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
        from .data import encode_prompt_completion

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


def load_reward_fn(spec: str) -> RewardFn:
    """Import ``"package.module:function"``: ``function(prompts, responses) -> (B,) scores``."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"reward_fn {spec!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"reward_fn {spec!r} is not callable")
    return fn


def score(reward_fn: RewardFn, prompts: Sequence[Messages], responses: Sequence[str]) -> torch.Tensor:
    """Call ``reward_fn`` and check it returned one finite float per response: ``(B,)`` float32."""
    out = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float32).reshape(-1).cpu()
    if out.shape[0] != len(responses):
        raise ValueError(f"the reward function returned {out.shape[0]} scores for {len(responses)} responses")
    if not torch.isfinite(out).all():
        raise ValueError("the reward function returned a non-finite score")
    return out


# ------------------------------------------------------------------ batching
def _pad(rows: Sequence[Sequence], value, dtype) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=dtype)


def collate(samples: Sequence[TokenSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + response sequences and response-aligned tensors.

    Returns ``input_ids`` / ``attention_mask`` ``(B, L)``; ``response_ids``,
    ``response_mask``, ``engine_logp`` ``(B, R)``; ``start`` ``(B,)`` (index of the first
    response token in ``input_ids``), ``length`` ``(B,)`` (response tokens) and ``ended``
    ``(B,)`` (the response has an end token).
    """
    seqs = [list(s.prompt_ids) + list(s.response_ids) for s in samples]
    return {
        "input_ids": _pad(seqs, pad_id, torch.long),
        "attention_mask": _pad([[1] * len(q) for q in seqs], 0, torch.long),
        "response_ids": _pad([s.response_ids for s in samples], pad_id, torch.long),
        "response_mask": _pad([[1] * len(s.response_ids) for s in samples], 0, torch.float32),
        "engine_logp": _pad([s.logprobs for s in samples], 0.0, torch.float32),
        "start": torch.tensor([len(s.prompt_ids) for s in samples], dtype=torch.long),
        "length": torch.tensor([len(s.response_ids) for s in samples], dtype=torch.long),
        "ended": torch.tensor([s.ended for s in samples], dtype=torch.bool),
    }


def select(batch: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of every tensor, with padding columns no row of the selection needs cut off."""
    out = {k: v[idx] for k, v in batch.items()}
    width = int(out["attention_mask"].sum(-1).max())
    resp = max(1, int(out["length"].max()))
    for k in ("input_ids", "attention_mask"):
        out[k] = out[k][:, :width]
    for k, v in out.items():
        if v.dim() == 2 and k not in ("input_ids", "attention_mask"):
            out[k] = v[:, :resp]
    return out


def _positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Index of the position whose output predicts each response token, ``(B, R)``, and the
    first such position over the batch."""
    R = batch["response_ids"].shape[1]
    pos = batch["start"][:, None] - 1 + torch.arange(R, device=batch["start"].device)[None, :]
    L = batch["input_ids"].shape[1]
    return pos.clamp(max=L - 1), int(batch["start"].min()) - 1


def response_logps(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log pi(a_t | s_t)`` of every response token, ``(B, R)`` (and the entropies, ``(B, R)``).

    The logits are divided by ``temperature``, so the log-probs are those of the
    distribution the engine sampled from. Only the positions from the earliest response
    start onwards go through the LM head (``logits_to_keep``).
    """
    pos, first = _positions(batch)
    L = batch["input_ids"].shape[1]
    keep = L - first
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep)
    logits = out.logits  # (B, keep, V): positions first .. L-1
    idx = (pos - first).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    logits = torch.gather(logits, 1, idx)
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logps(logits, batch["response_ids"])
    ent = entropy_from_logits(logits.detach()) if with_entropy else None
    return lp, ent


def response_values(critic, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``V(s_t)`` before every response token, ``(B, R)``, from a token-classification critic."""
    pos, _ = _positions(batch)
    out = critic(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return torch.gather(out.logits[..., 0], 1, pos).float()
