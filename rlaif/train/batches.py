"""Batches for training: length-grouped micro-batches of indices, the collation of tokenised
SFT examples and preference pairs into padded tensors, and the completion-length statistics of
preference pairs. The examples come from :mod:`rlaif.train.data`.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int = 32
) -> list[list[int]]:
    """Micro-batches of indices in which examples have similar lengths.

    The indices are shuffled with ``(seed, epoch)``, cut into windows of
    ``group * batch_size``, sorted by length inside each window and cut into
    batches; the batch order is then shuffled. So padding stays small while the
    data order stays random, and the result depends only on its arguments (which
    is what lets a resumed run find its place). ``group=1`` gives plain random
    batches.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = max(1, group) * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _pad(seqs: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def collate_sft(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask``, all ``(B, T)``."""
    ids = [e["input_ids"] for e in examples]
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(s) for s in ids], 0),
        "loss_mask": _pad([e["loss_mask"] for e in examples], 0),
    }


def _pair_lengths(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {side + "_len": torch.tensor([len(e[side]) for e in examples], dtype=torch.long)
            for side in ("chosen", "rejected")}


def collate_pairs(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, ``(2B, T)``, so one forward pass scores both.

    ``loss_mask`` marks completion tokens. Per-pair ``chosen_prob``, ``margin``,
    ``chosen_len`` / ``rejected_len`` (completion tokens) and ``index`` are ``(B,)``;
    precomputed ``ref_chosen`` / ``ref_rejected`` log-probs are passed through when the
    examples carry them.
    """
    seqs, masks = [], []
    for side in ("chosen", "rejected"):
        for e in examples:
            seqs.append(e["prompt"] + e[side])
            masks.append([0] * len(e["prompt"]) + [1] * len(e[side]))
    batch = {
        "input_ids": _pad(seqs, pad_id),
        "attention_mask": _pad([[1] * len(s) for s in seqs], 0),
        "loss_mask": _pad(masks, 0),
        "chosen_prob": torch.tensor([e["chosen_prob"] for e in examples], dtype=torch.float32),
        "margin": torch.tensor([e["margin"] for e in examples], dtype=torch.float32),
        **_pair_lengths(examples),
        "index": torch.tensor([e.get("index", -1) for e in examples], dtype=torch.long),
    }
    if all("ref_chosen" in e for e in examples):
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float64)
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float64)
    return batch


def collate_pairs_shared_prompt(examples: Sequence[dict], pad_id: int, carry_last: bool = False) -> dict[str, torch.Tensor]:
    """The same pairs laid out for one prompt pass shared by both completions.

    ``prompt_ids`` / ``prompt_mask`` are ``(B, P)``; ``completion_ids`` / ``completion_mask``
    are ``(2B, C)``, interleaved (chosen of pair 0, rejected of pair 0, chosen of pair 1, ...)
    to match a prompt cache repeated with ``batch_repeat_interleave(2)``;
    ``completion_positions`` continue each row's own prompt length. ``attention_mask`` is the
    mask over prompt cache + completion, ``(2B, P + C)``, so it counts the same real tokens as
    :func:`collate_pairs`.

    ``carry_last`` (for log-probabilities of the completion) moves each prompt's last token to
    the front of its completions, so that the completion pass also yields the logits that
    score the first completion token; ``completion_loss_mask`` then marks the completion
    tokens. A batch with an empty prompt (or, with ``carry_last``, a one-token prompt) falls
    back to :func:`collate_pairs` (callers dispatch on ``"prompt_ids" in batch``).
    """
    if any(len(e["prompt"]) < (2 if carry_last else 1) for e in examples):
        return collate_pairs(examples, pad_id)
    if carry_last:
        prompts = [e["prompt"][:-1] for e in examples]
        comps = [[e["prompt"][-1]] + c for e in examples for c in (e["chosen"], e["rejected"])]
    else:
        prompts = [e["prompt"] for e in examples]
        comps = [c for e in examples for c in (e["chosen"], e["rejected"])]
    prompt_mask = _pad([[1] * len(p) for p in prompts], 0)
    comp_mask = _pad([[1] * len(c) for c in comps], 0)
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long).repeat_interleave(2)
    batch = {
        "prompt_ids": _pad(prompts, pad_id),
        "prompt_mask": prompt_mask,
        "completion_ids": _pad(comps, pad_id),
        "completion_mask": comp_mask,
        "completion_positions": lens[:, None] + torch.arange(comp_mask.shape[1])[None, :],
        "attention_mask": torch.cat([prompt_mask.repeat_interleave(2, 0), comp_mask], 1),
        "chosen_prob": torch.tensor([e["chosen_prob"] for e in examples], dtype=torch.float32),
        "margin": torch.tensor([e["margin"] for e in examples], dtype=torch.float32),
        **_pair_lengths(examples),
        "index": torch.tensor([e.get("index", -1) for e in examples], dtype=torch.long),
    }
    if carry_last:
        batch["completion_loss_mask"] = _pad([[0] + [1] * (len(c) - 1) for c in comps], 0)
    if all("ref_chosen" in e for e in examples):
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float64)
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float64)
    return batch


def chosen_first(x: torch.Tensor) -> torch.Tensor:
    """Rows interleaved (c0, r0, c1, r1, ...) -> chosen rows then rejected rows, as collate_pairs orders them."""
    return x.view(-1, 2, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def length_summary(examples: Sequence[dict]) -> dict[str, float]:
    """How the completion lengths (tokens) of chosen and rejected compare over a data set.

    A preference set in which the chosen answer is usually the longer one teaches a policy
    that length pays (Singhal et al. 2023, "A Long Way to Go"); these numbers make that
    visible before training. ``length_diff_pXX`` are percentiles of ``|y_c| - |y_r|``
    (nearest rank).

    Args:
        examples: tokenised pairs with ``chosen`` and ``rejected`` token lists.
    Returns:
        ``pairs``, ``length_chosen_mean``, ``length_rejected_mean``, ``chosen_longer``,
        ``same_length`` (shares of pairs), ``length_diff_p10``, ``length_diff_p50``,
        ``length_diff_p90``; empty for no examples.
    """
    if not examples:
        return {}
    lc = [len(e["chosen"]) for e in examples]
    lr = [len(e["rejected"]) for e in examples]
    diff = sorted(c - r for c, r in zip(lc, lr))
    n = len(diff)

    def pct(q: float) -> float:
        return float(diff[min(n - 1, max(0, math.ceil(q * n) - 1))])

    return {
        "pairs": float(n),
        "length_chosen_mean": sum(lc) / n,
        "length_rejected_mean": sum(lr) / n,
        "chosen_longer": sum(d > 0 for d in diff) / n,
        "same_length": sum(d == 0 for d in diff) / n,
        "length_diff_p10": pct(0.1),
        "length_diff_p50": pct(0.5),
        "length_diff_p90": pct(0.9),
    }


def pair_length_metrics(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-batch means of the completion lengths (tokens) from a collated pair batch:
    ``length_chosen``, ``length_rejected`` and ``chosen_longer`` (share of pairs)."""
    lc, lr = batch["chosen_len"].float(), batch["rejected_len"].float()
    return {"length_chosen": lc.mean(), "length_rejected": lr.mean(), "chosen_longer": (lc > lr).float().mean()}


def describe_lengths(summary: dict[str, float]) -> str:
    """One line for people: mean lengths and how often the chosen answer is the longer one."""
    if not summary:
        return "no pairs"
    return (
        f"completion lengths (tokens): chosen {summary['length_chosen_mean']:.1f}, rejected "
        f"{summary['length_rejected_mean']:.1f} on average; chosen longer in {100 * summary['chosen_longer']:.0f}% "
        f"of {int(summary['pairs'])} pairs (same length {100 * summary['same_length']:.0f}%); chosen - rejected "
        f"p10 / median / p90: {summary['length_diff_p10']:g} / {summary['length_diff_p50']:g} / {summary['length_diff_p90']:g}"
    )


def pair_length(e: dict) -> int:
    return len(e["prompt"]) + max(len(e["chosen"]), len(e["rejected"]))
