"""DPO-family recipe: DPO (sigmoid), conservative DPO / soft AI labels, IPO, hinge, R-DPO, SimPO.

Reference log-probabilities come from the initial model (or ``ref_model``) and are
either precomputed once and cached on disk (``reference: precompute``, the default:
no second model in memory during training) or computed on the fly
(``reference: online``; with LoRA the reference is the base model with adapters
switched off). SimPO needs no reference.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import reference
from . import common
from .common import (
    apply_lora, autocast_dtype, fit_preferences, init_session, load_pretrained, load_splits, load_tokenizer, LoopSpec,
    prepare_model, recipe_main, resolve_model_path, save_final, seed_everything, Session, setup_device, unwrap,
)
from .config import TrainConfig, load_config
from .data import collate_pairs, collate_pairs_shared_prompt, pair_length, pair_length_metrics
from .losses import DPO_LOSS_TYPES, PAIR_LOSSES, rdpo_loss, simpo_loss, soft_label_noise


#: SimPO's own defaults (Meng et al. 2024 tune beta around 2 and gamma / beta around 0.5),
#: and DPO's beta (Rafailov et al. 2023).
SIMPO_BETA = 2.0
SIMPO_GAMMA_BETA_RATIO = 0.5
DPO_BETA = 0.1


@dataclass
class DPOConfig(TrainConfig):
    loss: str = "sigmoid"
    """"sigmoid" (DPO; with label smoothing or soft labels: conservative DPO), "ipo", "hinge",
    "rdpo" (R-DPO: DPO with a length penalty in the reward, needs alpha) or "simpo" (reference-free)."""
    beta: float | None = None
    """Inverse temperature of the implicit reward (IPO's tau). Default 0.1, and 2.0 for SimPO."""
    alpha: float | None = None
    """R-DPO only: weight of the length penalty alpha |y| in the reward (Park et al. 2024): the
    loss adds alpha (|chosen| - |rejected|) to the beta-scaled margin, so a longer chosen
    answer needs less margin from the policy."""
    label_smoothing: float = 0.0
    """Probability that a label is flipped, in [0, 0.5) (cDPO, Mitchell 2023)."""
    soft_labels: bool = True
    """Use each pair's AI probability chosen_prob as its label (smoothed by label_smoothing)."""
    simpo_gamma: float | None = None
    """SimPO only: target reward margin gamma (default simpo_gamma_beta_ratio x beta)."""
    simpo_gamma_beta_ratio: float | None = None
    """SimPO only: gamma / beta, as the SimPO paper tunes it (default 0.5)."""
    length_average: bool | None = None
    """Average log-probs over completion tokens (default: true for ipo and simpo, false
    otherwise; SimPO requires it)."""
    reference: str | None = None
    """"precompute" (once, cached on disk; the default) or "online" (a forward pass per step).
    Not for SimPO, which has no reference."""
    ref_model: str | None = None
    """Reference model folder (default: the starting model). Not for SimPO."""
    ref_cache_dir: str | None = None
    """Where precomputed reference log-probs are cached (default: <runs_dir>/.cache/ref_logps)."""
    shared_prompt: bool = True
    """Run each pair's prompt once and let chosen and rejected continue from its key/value cache
    (same log-probs and gradients as the plain pass; off with gradient checkpointing and FSDP)."""
    name: str = "dpo"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in DPO_LOSS_TYPES:
            raise ValueError(f"loss must be one of {DPO_LOSS_TYPES}")
        simpo = self.loss == "simpo"
        if self.beta is None:
            self.beta = SIMPO_BETA if simpo else DPO_BETA
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must lie in [0, 0.5)")
        if self.loss == "rdpo":
            if self.alpha is None or not self.alpha >= 0:
                raise ValueError(
                    "loss: rdpo needs alpha >= 0, the length penalty per token in the reward "
                    "(with alpha = 0.01 a chosen answer 100 tokens longer needs 1 unit less of beta-scaled margin)"
                )
        elif self.alpha is not None:
            raise ValueError(f"alpha is R-DPO's length penalty; it has no effect with loss: {self.loss} (use loss: rdpo)")
        if simpo:
            self._check_simpo()
        else:
            if self.simpo_gamma is not None or self.simpo_gamma_beta_ratio is not None:
                raise ValueError(f"simpo_gamma and simpo_gamma_beta_ratio apply to loss: simpo only, not {self.loss}")
            if self.reference is None:
                self.reference = "precompute"
            if self.reference not in ("precompute", "online"):
                raise ValueError("reference must be 'precompute' or 'online'")
        if self.length_average is None:
            self.length_average = self.loss in ("ipo", "simpo")

    def _check_simpo(self) -> None:
        """SimPO is reference-free and length-normalised (Meng et al. 2024, eq. 6): refuse
        settings that would silently turn it into something else."""
        not_simpo = []
        if self.length_average is False:
            not_simpo.append("length_average: false (SimPO's reward is the *average* log-probability)")
        for key in ("reference", "ref_model", "ref_cache_dir"):
            if getattr(self, key) is not None:
                not_simpo.append(f"{key} (SimPO uses no reference model)")
        if not_simpo:
            raise ValueError("loss: simpo does not take " + "; ".join(not_simpo))
        ratio, gamma = self.simpo_gamma_beta_ratio, self.simpo_gamma
        if ratio is not None and gamma is not None and not math.isclose(gamma, ratio * self.beta, rel_tol=1e-9):
            raise ValueError(
                f"simpo_gamma {gamma} and simpo_gamma_beta_ratio {ratio} disagree (gamma = ratio x beta = "
                f"{ratio * self.beta}); set one of them"
            )
        if gamma is None:
            ratio = SIMPO_GAMMA_BETA_RATIO if ratio is None else ratio
            gamma = ratio * self.beta
        if gamma < 0:
            raise ValueError("simpo_gamma must be >= 0")
        self.simpo_gamma, self.simpo_gamma_beta_ratio = gamma, gamma / self.beta

    @property
    def needs_reference(self) -> bool:
        return self.loss != "simpo"

    @property
    def cache_dir(self) -> Path:
        return Path(self.ref_cache_dir) if self.ref_cache_dir else Path(self.runs_dir) / ".cache" / "ref_logps"


def _reference_context(s: Session):
    """Context in which ``s.extra['ref']`` scores as the reference model."""
    if s.extra.get("ref") is not None or not s.cfg.lora.enabled:
        return contextlib.nullcontext()
    return unwrap(s.model).disable_adapter()  # LoRA: the base model is the reference


def loop_spec(cfg: DPOConfig, pad_id: int, shared: bool = False) -> LoopSpec:
    def loss_fn(s: Session, batch, normalizer):
        logps = reference.pair_logps(s.model, batch)
        n_tokens = reference.completion_token_counts(batch).clamp(min=1)
        b = logps.shape[0] // 2
        if cfg.needs_reference:
            if "ref_chosen" in batch:
                ref = torch.cat([batch["ref_chosen"], batch["ref_rejected"]]).to(logps)
            else:
                with torch.no_grad(), _reference_context(s):
                    scorer = s.extra.get("ref")
                    ref = reference.pair_logps(s.model if scorer is None else scorer, batch)
        if cfg.length_average:
            logps = logps / n_tokens
            ref = ref / n_tokens if cfg.needs_reference else None
        p = batch["chosen_prob"] if cfg.soft_labels else torch.ones_like(batch["chosen_prob"])
        eps = soft_label_noise(p, cfg.label_smoothing)
        if cfg.loss == "simpo":
            loss, m = simpo_loss(logps[:b], logps[b:], cfg.beta, cfg.simpo_gamma, eps, normalizer)
        elif cfg.loss == "rdpo":
            loss, m = rdpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], batch["chosen_len"], batch["rejected_len"],
                                cfg.beta, cfg.alpha, eps, normalizer)
        else:
            loss, m = PAIR_LOSSES[cfg.loss](logps[:b], logps[b:], ref[:b], ref[b:], cfg.beta, eps, normalizer)
        m["logps_chosen"] = logps[:b].mean().detach()
        m["logps_rejected"] = logps[b:].mean().detach()
        return loss, {**m, **pair_length_metrics(batch)}

    return LoopSpec(
        collate=(lambda ex: collate_pairs_shared_prompt(ex, pad_id, carry_last=True)) if shared
        else (lambda ex: collate_pairs(ex, pad_id)),
        length=pair_length,
        count=lambda batch: int(batch["chosen_prob"].shape[0]),
        loss_fn=loss_fn,
    )


def _load_lm(path: str, cfg: DPOConfig):
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, path, cfg)


def setup(cfg: DPOConfig) -> tuple[Session, LoopSpec]:
    d = setup_device(cfg)
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train, ev = load_splits(cfg, tok, "preference", d.rank)
    model = prepare_model(apply_lora(_load_lm(path, cfg), cfg, "CAUSAL_LM"), cfg, d)
    s = Session(cfg, model, tok, train, ev, d, autocast_dtype(cfg, d.device))
    ref = None
    if cfg.needs_reference:
        ref_path = resolve_model_path(cfg.ref_model) if cfg.ref_model else path
        # A separate frozen reference is needed for a named ref_model, or to score on the
        # fly during full fine-tuning; otherwise the untrained policy (with LoRA: the base
        # model, adapters off) is the reference.
        separate = cfg.ref_model is not None or (cfg.reference == "online" and not cfg.lora.enabled)
        ref = prepare_model(_load_lm(ref_path, cfg), cfg, d).eval().requires_grad_(False) if separate else None
        s.extra["ref"] = ref
        if cfg.reference == "precompute":
            with _reference_context(s):
                s.extra["ref_cache"] = reference.precompute(
                    ref if ref is not None else model, ref_path, train, ev, tok.pad_token_id, cfg.batch_size,
                    d.device, s.autocast, s.amp, cfg.cache_dir, d.rank,
                )
            s.extra["ref"] = ref = None  # no longer needed in memory
    # an online reference scores the same batches, so it must take the shared pass too
    shared = cfg.shared_prompt and reference.can_share_prompt(model) and (ref is None or reference.can_share_prompt(ref))
    spec = loop_spec(cfg, tok.pad_token_id, shared)
    return init_session(s, spec), spec


train = fit_preferences  # the length report of the pairs, then the shared loop


cleanup = common.cleanup  # every recipe module offers setup, train, save, cleanup and main


def save(s: Session):
    return save_final(s.model, s.tokenizer, s.run_dir / "final", s.cfg, s.dist.rank)


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    return recipe_main(load_config(DPOConfig, config_path, overrides), setup, train, save, "policy")
