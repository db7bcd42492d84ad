"""SFT recipe: cross-entropy on assistant tokens of (revised) conversations.

Reads rlaif's ``sft`` output (``messages`` rows) as is, or TRL's prompt-completion
and language-modelling rows. The loss of an optimiser step is the mean over every
trained token in the step (not a mean of per-batch means), so gradient
accumulation gives the same update as one large batch.
"""
from __future__ import annotations

from dataclasses import dataclass


from . import common
from .common import (
    apply_lora, autocast_dtype, fit, init_session, load_pretrained, load_splits, load_tokenizer, LoopSpec,
    prepare_model, recipe_main, resolve_model_path, save_final, seed_everything, Session, setup_device,
)
from .config import TrainConfig, load_config
from .data import collate_sft
from .losses import sft_loss
from .reference import completion_logps


@dataclass
class SFTConfig(TrainConfig):
    name: str = "sft"
    lr: float = 2e-5


def loop_spec(cfg: SFTConfig, pad_id: int) -> LoopSpec:
    def loss_fn(s: Session, batch, normalizer):
        lp, mask = completion_logps(s.model, batch)  # skips the logits of leading prompt tokens
        loss, metrics = sft_loss(lp, mask, normalizer)
        metrics.pop("tokens")  # a count, not a mean: the loop reports tokens/s instead
        return loss, metrics

    return LoopSpec(
        collate=lambda ex: collate_sft(ex, pad_id),
        length=lambda e: len(e["input_ids"]),
        count=lambda batch: int(batch["loss_mask"][:, 1:].sum()),
        loss_fn=loss_fn,
    )


def setup(cfg: SFTConfig) -> tuple[Session, LoopSpec]:
    from transformers import AutoModelForCausalLM

    d = setup_device(cfg)
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train, ev = load_splits(cfg, tok, "sft", d.rank)
    model = load_pretrained(AutoModelForCausalLM, path, cfg)
    model = prepare_model(apply_lora(model, cfg, "CAUSAL_LM"), cfg, d)
    spec = loop_spec(cfg, tok.pad_token_id)
    s = Session(cfg, model, tok, train, ev, d, autocast_dtype(cfg, d.device))
    return init_session(s, spec), spec


def train(s: Session, spec: LoopSpec) -> dict[str, float]:
    return fit(s, spec)


cleanup = common.cleanup  # every recipe module offers setup, train, save, cleanup and main


def save(s: Session):
    return save_final(s.model, s.tokenizer, s.run_dir / "final", s.cfg, s.dist.rank)


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    return recipe_main(load_config(SFTConfig, config_path, overrides), setup, train, save, "model")
