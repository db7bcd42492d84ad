"""Rollouts for RL: weight sync to the engine and batching.

* Samples come from the engine (``engine.sample_tokens``, see :class:`rlaif.engine.base.RLEngine`):
  token ids plus the log-probability of every sampled token, one seeded request per response.
* Rewards (reward models, process reward models, reward functions) live in :mod:`rlaif.reward`.
* :func:`collate` lays the rollouts out for the trainer and :func:`response_logps` /
  :func:`response_values` read the policy's log-probs and the critic's values at the
  response tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rlaif.engine.base import TokenSample

from .losses import token_logps
from .rl_losses import entropy_from_logits


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
