"""Reward-model recipe: Bradley-Terry on preference pairs, soft AI labels.

The model is ``AutoModelForSequenceClassification`` with one label on a causal-LM
backbone (e.g. ``LlamaForSequenceClassification``): a linear ``score`` head over the
hidden states, read at the last token that is not padding (``pad_token_id`` is set in
the config so that ``transformers`` pools the same way at inference). The final
folder loads with ``AutoModelForSequenceClassification.from_pretrained``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import common
from .common import (
    apply_lora, autocast_dtype, fit_preferences, init_session, load_pretrained, load_splits, load_tokenizer, LoopSpec,
    prepare_model, recipe_main, resolve_model_path, save_final, seed_everything, Session, setup_device,
)
from .config import TrainConfig, load_config
from .data import collate_pairs, collate_pairs_shared_prompt, pair_length, pair_length_metrics
from .losses import bradley_terry_loss
from .reference import can_share_prompt, shared_prompt_forward


@dataclass
class RMConfig(TrainConfig):
    soft_labels: bool = True
    """Fit the AI probability ``chosen_prob`` (cross-entropy); false treats every pair as certain."""
    use_margin: bool = False
    """Make the credited side win by the row's ``margin`` (the labeller's 0-3 level): Llama 2's
    ``-log sigma(r_c - r_r - m)``; with soft labels the rejected-is-better share asks the same of
    the rejected side. The level is a function of chosen_prob, so with soft labels it widens the
    gap beyond the judge's log-odds (see :func:`rlaif.train.losses.bradley_terry_loss`)."""
    center_rewards_coef: float = 0.0
    """Weight of ``mean((r_c + r_r)^2)`` that keeps rewards centred on zero (Eisenstein et al. 2023)."""
    shared_prompt: bool = True
    """Run each pair's prompt through the model once and let chosen and rejected continue from
    its key/value cache, instead of processing the prompt twice (same rewards and gradients;
    the saving grows with the prompt's share of the tokens). Off with gradient checkpointing,
    which disables the cache; models whose cache cannot be repeated fall back to the plain pass."""
    name: str = "rm"

    def __post_init__(self):
        super().__post_init__()
        if self.center_rewards_coef < 0:
            raise ValueError("center_rewards_coef must be >= 0")


def rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar reward per row, ``(2B,)``: the score head at the last non-padding token."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits.squeeze(-1).float()


def rewards_shared_prompt(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` rewards, ``(B,)`` each, from one prompt pass per pair
    (:func:`rlaif.train.reference.shared_prompt_forward`). The score head pools at the last
    non-padding completion token, as the plain pass does on the full sequence."""
    r = shared_prompt_forward(model, batch).logits.squeeze(-1).float().view(-1, 2)
    return r[:, 0], r[:, 1]


def loop_spec(cfg: RMConfig, pad_id: int, shared: bool = False) -> LoopSpec:
    def loss_fn(s: Session, batch, normalizer):
        if "prompt_ids" in batch:
            rc, rr = rewards_shared_prompt(s.model, batch)
        else:
            r = rewards(s.model, batch)
            b = r.shape[0] // 2
            rc, rr = r[:b], r[b:]
        p = batch["chosen_prob"] if cfg.soft_labels else 1.0
        m = batch["margin"] if cfg.use_margin else 0.0
        loss, metrics = bradley_terry_loss(rc, rr, p, m, cfg.center_rewards_coef, normalizer)
        return loss, {**metrics, **pair_length_metrics(batch)}

    return LoopSpec(
        collate=(lambda ex: collate_pairs_shared_prompt(ex, pad_id)) if shared else (lambda ex: collate_pairs(ex, pad_id)),
        length=pair_length,
        count=lambda batch: int(batch["chosen_prob"].shape[0]),
        loss_fn=loss_fn,
    )


def setup(cfg: RMConfig) -> tuple[Session, LoopSpec]:
    from transformers import AutoModelForSequenceClassification

    d = setup_device(cfg)
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train, ev = load_splits(cfg, tok, "preference", d.rank)
    model = load_pretrained(AutoModelForSequenceClassification, path, cfg, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model = prepare_model(apply_lora(model, cfg, "SEQ_CLS"), cfg, d)
    shared = cfg.shared_prompt and can_share_prompt(model)
    spec = loop_spec(cfg, tok.pad_token_id, shared)
    s = Session(cfg, model, tok, train, ev, d, autocast_dtype(cfg, d.device))
    return init_session(s, spec), spec


train = fit_preferences  # the length report of the pairs, then the shared loop


cleanup = common.cleanup  # every recipe module offers setup, train, save, cleanup and main


def save(s: Session):
    return save_final(s.model, s.tokenizer, s.run_dir / "final", s.cfg, s.dist.rank)


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    return recipe_main(load_config(RMConfig, config_path, overrides), setup, train, save, "reward model")
