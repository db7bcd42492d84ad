"""Completion log-probabilities, and DPO's reference log-probabilities cached on disk.

The cache file is named by a SHA-256 of (model weights, tokenised train and eval
data, autocast dtype), so any change to the model, the data, the tokenizer, the chat
template or the truncation settings computes fresh values.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .common import is_fsdp
from .data import chosen_first, collate_pairs, fingerprint, pair_length
from .losses import sequence_logps, token_logps


def model_fingerprint(path: str | Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of a model folder's config and weight files (memoised by size and mtime)."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json") and f.is_file())
    stamp = json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo_path = (memo_dir / "model_hashes.json") if memo_dir else None
    memo = json.loads(memo_path.read_text()) if memo_path and memo_path.exists() else {}
    key = f"{p.resolve()}|{stamp}"
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    for f in files:
        if f.name.startswith("tokenizer") or f.name == "chat_template.json":
            continue  # the tokenised data already covers the tokenizer
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    digest = h.hexdigest()
    if memo_path:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo[key] = digest
        memo_path.write_text(json.dumps(memo))
    return digest


def cache_key(model_hash: str, train: list[dict], ev: list[dict], amp: torch.dtype | None) -> str:
    keys = ("prompt", "chosen", "rejected")
    parts = [model_hash, fingerprint(train, keys), fingerprint(ev, keys), str(amp)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _inner(model):
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def completion_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs over the completion region and its mask, both ``(N, K)``.

    Only the last ``K`` positions, from the batch's earliest completion token on,
    go through the LM head (``logits_to_keep``): with vocabularies of 50-150k
    tokens the logits of prompt positions cost as much as the rest of the model
    and are never used. Logits at position ``t`` score token ``t + 1``.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``loss_mask``, all ``(N, T)``, right-padded.
    """
    ids, mask = batch["input_ids"], batch["loss_mask"]
    t = ids.shape[1]
    used = mask.bool().any(0)
    first = int(used.int().argmax()) if bool(used.any()) else t - 1
    start = max(first - 1, 0)
    k = t - start
    extra = {"logits_to_keep": k} if _takes_logits_to_keep(type(_inner(model))) else {}
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False, **extra).logits
    logits = logits[:, -k:]
    return token_logps(logits[:, :-1], ids[:, start + 1 :]), mask[:, start + 1 :]


def pair_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probabilities of every row, ``(2B,)`` (chosen rows first).

    A batch laid out by ``collate_pairs_shared_prompt(..., carry_last=True)`` runs each
    prompt once (see :func:`pair_logps_shared_prompt`)."""
    if "prompt_ids" in batch:
        return pair_logps_shared_prompt(model, batch)
    return sequence_logps(*completion_logps(model, batch))


def pair_logps_shared_prompt(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Like :func:`pair_logps`, with one prompt pass shared by chosen and rejected.

    The prompt (less its last token) runs once with the cache on, the cache is repeated
    for the two completions, and each completion, led by the prompt's last token, continues
    from it: its logits score every completion token. Same values and gradients as the plain
    pass; the prompt's tokens are processed once instead of twice.
    """
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(type(_inner(model))) else {}
    ids = batch["completion_ids"]
    logits = shared_prompt_forward(model, batch, **extra).logits
    lp = sequence_logps(token_logps(logits[:, :-1], ids[:, 1:]), batch["completion_loss_mask"][:, 1:])
    return chosen_first(lp)


def shared_prompt_forward(model, batch: dict[str, torch.Tensor], **prompt_kwargs):
    """The completion pass of a shared-prompt batch (see ``collate_pairs_shared_prompt``).

    The prompts run once with the cache on (``prompt_kwargs`` go to that call); the cache is
    repeated for the two completions of each pair (autograd flows through the repeat, so the
    prompt's gradient sums both uses), and the completions continue from it with their own
    positions and a mask that hides the prompt padding. Returns the completion pass's output.
    """
    out = model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], use_cache=True, **prompt_kwargs)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)
    return model(input_ids=batch["completion_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["completion_positions"], past_key_values=cache, use_cache=True)


def completion_token_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Completion tokens per row, ``(2B,)``, chosen rows first, for either batch layout."""
    if "completion_loss_mask" in batch:
        return chosen_first(batch["completion_loss_mask"][:, 1:].sum(-1))
    return batch["loss_mask"][:, 1:].sum(-1)


# Decoder families whose forward takes a key/value cache and explicit positions the way the
# shared prompt pass uses them (checked against the plain pass in the tests).
SHARED_PROMPT_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo", "olmo2", "granite"}


def can_share_prompt(model) -> bool:
    """Whether the shared prompt pass is safe for this (possibly wrapped) model."""
    from transformers import DynamicCache

    if is_fsdp(model):
        # FSDP2 frees the gathered weights after each forward, and the backward of the
        # first of two forwards through the same layers then finds them gone.
        return False
    m = getattr(model, "module", model)  # DDP: checked with 2 processes, same losses as the plain pass
    cfg = getattr(m, "config", None)
    if cfg is None or getattr(m, "is_gradient_checkpointing", False):
        return False
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "model_type", "") not in SHARED_PROMPT_MODELS:
        return False
    return callable(getattr(DynamicCache, "batch_repeat_interleave", None))


@torch.no_grad()
def compute(model, examples: list[dict], pad_id: int, batch_size: int, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reference log-probs of chosen and rejected completions, ``(N,)`` each, in example order."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    chosen = torch.zeros(len(examples), dtype=torch.float64)
    rejected = torch.zeros(len(examples), dtype=torch.float64)
    order = sorted(range(len(examples)), key=lambda i: pair_length(examples[i]))
    for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs", dynamic_ncols=True):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs([examples[i] for i in idx], pad_id).items()}
        with autocast():
            lp = pair_logps(model, batch).double().cpu()
        chosen[idx], rejected[idx] = lp[: len(idx)], lp[len(idx) :]
    model.train(was_training)
    return chosen, rejected


def attach(examples: list[dict], chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        e["ref_chosen"], e["ref_rejected"] = c, r


def precompute(model, model_path: str, train: list[dict], ev: list[dict], pad_id: int, batch_size: int,
               device, autocast, amp, cache_dir: Path, rank: int = 0) -> Path:
    """Fill ``ref_chosen`` / ``ref_rejected`` on every example, from the cache when it has them."""
    key = cache_key(model_fingerprint(model_path, cache_dir if rank == 0 else None), train, ev, amp)
    path = cache_dir / f"{key}.safetensors"
    if path.exists():
        t = load_file(str(path))
    else:
        t = {}
        t["train_chosen"], t["train_rejected"] = compute(model, train, pad_id, batch_size, device, autocast)
        t["eval_chosen"], t["eval_rejected"] = compute(model, ev, pad_id, batch_size, device, autocast)
        if rank == 0:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(t, str(tmp), metadata={"model": str(model_path)})
            tmp.rename(path)
    attach(train, t["train_chosen"], t["train_rejected"])
    attach(ev, t["eval_chosen"], t["eval_rejected"])
    return path
