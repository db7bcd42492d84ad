"""Process reward model recipe: token classification at the step separators (``rlaif train prm``).

Reads TRL's stepwise-supervision rows (``prompt``, ``completions`` = the steps, ``labels`` = one
bool per step; ``rlaif label-steps`` writes them, with ``step_scores`` beside) from a run folder
(its ``steps/``), a saved dataset or a file. The model is ``AutoModelForTokenClassification``
with two labels on the policy's backbone; each step is laid out as step + ``step_separator``
after the chat-templated prompt and trained at its last token (:func:`rlaif.reward.prm.encode_steps`,
the same layout the scorer reads), on hard labels or, with ``soft_labels``, on the soft scores
(the share of correct Monte-Carlo continuations).

Metrics on the held-out solutions (logged as ``eval/...`` and printed): step accuracy; F1 of
finding the wrong steps (a wrong step is the positive class; a step is called wrong when
P(correct) < 0.5); and, as in ProcessBench (Zheng et al. 2024), the accuracy of locating the
first wrong step on solutions that have one, the accuracy of calling the others all correct, and
the harmonic mean of the two. The final folder loads with
``AutoModelForTokenClassification.from_pretrained`` and holds ``rlaif_prm.json`` (separator and
step splitter) for :class:`rlaif.reward.prm.ProcessRewardModel`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rlaif.data.steps import StepSplitter
from rlaif.reward.prm import encode_steps, write_prm_config

from . import common
from .common import (
    apply_lora, autocast_dtype, fit, init_session, load_pretrained, load_tokenizer, LoopSpec, prepare_model, recipe_main,
    resolve_model_path, save_final, seed_everything, Session, setup_device,
)
from .config import TrainConfig, load_config
from .data import load_rows, split_eval
from .process_losses import step_classification_loss


@dataclass
class PRMConfig(TrainConfig):
    name: str = "prm"
    soft_labels: bool = False
    """Fit each step's soft score (``step_scores``: the share of correct Monte-Carlo continuations, or the
    judge's probability) instead of its bool label."""
    step_separator: str = "\n"
    """Text after every step; the step's label is trained at its last token (TRL's ``step_separator``)."""
    step_split: str = "lines"
    """How the PRM cuts responses into steps when it scores them (recorded in rlaif_prm.json): lines,
    paragraphs, regex or marker; use the splitter the training steps were cut with."""
    step_pattern: str = ""
    """The regex or marker of step_split regex / marker."""
    classifier_dropout: float = 0.0
    """Dropout before the two-label head (transformers' token classifiers default to 0.1; 0 keeps a step a
    function of the data order alone, so runs resume and spread over processes exactly)."""
    lr: float = 2e-5

    def __post_init__(self):
        super().__post_init__()
        StepSplitter(self.step_split, self.step_pattern)  # checks the pair
        if not self.step_separator:
            raise ValueError("step_separator must not be empty")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError("classifier_dropout must lie in [0, 1)")


# ------------------------------------------------------------------ data
def step_data_path(path: str | Path) -> Path:
    """An rlaif run folder's ``steps/`` dataset; other paths pass through."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "steps").is_dir() and not (p / "dataset_info.json").exists():
        return p / "steps"
    return p


def check_row(row: dict[str, Any], where: str) -> None:
    steps, labels = row.get("completions"), row.get("labels")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: 'completions' must be a list of step strings")
    if not isinstance(labels, list) or len(labels) != len(steps) or not all(isinstance(b, bool) for b in labels):
        raise ValueError(f"{where}: 'labels' must be one bool per step ({len(steps)} steps)")
    scores = row.get("step_scores")
    if scores is not None and (len(scores) != len(steps) or not all(0.0 <= float(x) <= 1.0 for x in scores)):
        raise ValueError(f"{where}: 'step_scores' must be one number in [0, 1] per step")


def tokenize_steps(rows, tok, cfg: PRMConfig) -> tuple[list[dict], dict[str, int]]:
    """Examples ``{input_ids, ends, targets, labels, group}``; steps past max_length are dropped."""
    out, cut = [], 0
    for i, row in enumerate(rows):
        row = dict(row)
        check_row(row, f"row {i}")
        if cfg.soft_labels and row.get("step_scores") is None:
            raise ValueError(f"row {i}: soft_labels needs 'step_scores'")
        prompt = row.get("prompt_messages") or row["prompt"]
        ids, ends = encode_steps(tok, prompt, row["completions"], cfg.step_separator, cfg.max_length, cfg.max_prompt_length)
        cut += len(ends) < len(row["completions"])
        if not ends:
            continue
        labels = [bool(b) for b in row["labels"][: len(ends)]]
        targets = [float(x) for x in row["step_scores"][: len(ends)]] if cfg.soft_labels else [float(b) for b in labels]
        group = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()
        out.append({"input_ids": ids, "ends": ends, "targets": targets, "labels": labels, "group": group})
    return out, {"rows": len(rows), "truncated": cut, "dropped": len(rows) - len(out)}


def collate_steps(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` ``(B, L)``; ``targets``, ``labels`` and ``step_mask``
    ``(B, L)`` (set at each step's last token only)."""
    width = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros(B, width, dtype=torch.long)
    targets, labels, smask = torch.zeros(B, width), torch.zeros(B, width), torch.zeros(B, width)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        attn[b, :n] = 1
        pos = torch.tensor(e["ends"])
        targets[b, pos] = torch.tensor(e["targets"])
        labels[b, pos] = torch.tensor([float(x) for x in e["labels"]])
        smask[b, pos] = 1.0
    return {"input_ids": ids, "attention_mask": attn, "targets": targets, "labels": labels, "step_mask": smask}


def check_splitter(cfg: PRMConfig, rank: int = 0) -> None:
    """Warn when the data is a label-steps run folder whose steps were cut by another splitter than the
    one this PRM will record for scoring."""
    manifest = Path(cfg.data).expanduser() / "manifest.json"
    if rank != 0 or not manifest.is_file():
        return
    made = (json.loads(manifest.read_text(encoding="utf-8")).get("settings") or {}).get("splitter")
    mine = StepSplitter(cfg.step_split, cfg.step_pattern).describe()
    if made and made != mine:
        print(f"[rlaif.train] warning: {cfg.data} was cut into steps by {made}, but this PRM will cut responses by {mine} "
              f"when it scores them; set step_split / step_pattern to match")


def load_step_splits(cfg: PRMConfig, tok, rank: int = 0) -> tuple[list[dict], list[dict]]:
    check_splitter(cfg, rank)
    train, stats = tokenize_steps(load_rows(step_data_path(cfg.data), "sft"), tok, cfg)
    if cfg.eval_data:
        ev, _ = tokenize_steps(load_rows(step_data_path(cfg.eval_data), "sft"), tok, cfg)
    else:
        train, ev = split_eval(train, cfg.eval_fraction, cfg.seed)
    if not train:
        raise ValueError(f"no training solutions left in {cfg.data} (check max_length)")
    if rank == 0:
        print(f"[rlaif.train] {cfg.data}: {stats['rows']} solutions, {stats['truncated']} cut at max_length, "
              f"{stats['dropped']} dropped; {len(train)} train / {len(ev)} eval solutions")
    return train, ev


# ------------------------------------------------------------------ metrics
def step_metrics(probs: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]]) -> dict[str, float | None]:
    """Step accuracy, F1 of the wrong steps, and ProcessBench's first-wrong-step accuracies and F1.

    A step is called correct when P(correct) > 0.5. ProcessBench: a solution's answer is the index of
    its first wrong step, or "none" (-1); ``first_error_accuracy`` is over solutions with a wrong step,
    ``all_correct_accuracy`` over the others, ``processbench_f1`` their harmonic mean (None when a side is empty).
    """
    hit = total = tp = fp = fn = 0
    err_hits = err_n = ok_hits = ok_n = 0
    for p, lab in zip(probs, labels):
        pred = [x > 0.5 for x in p]
        lab = list(lab)[: len(pred)]
        for a, b in zip(pred, lab):
            hit += a == b
            total += 1
            tp += (not a) and (not b)
            fp += (not a) and b
            fn += a and (not b)
        gold = next((k for k, b in enumerate(lab) if not b), -1)
        guess = next((k for k, a in enumerate(pred) if not a), -1)
        if gold >= 0:
            err_n += 1
            err_hits += guess == gold
        else:
            ok_n += 1
            ok_hits += guess == -1
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    a = err_hits / err_n if err_n else None
    c = ok_hits / ok_n if ok_n else None
    pb = 2 * a * c / (a + c) if a is not None and c is not None and a + c > 0 else (0.0 if a is not None and c is not None else None)
    return {"step_accuracy": hit / total if total else None, "step_f1_wrong": f1, "first_error_accuracy": a,
            "all_correct_accuracy": c, "processbench_f1": pb, "solutions": float(len(probs))}


@torch.no_grad()
def predict(s: Session, examples: Sequence[dict]) -> list[list[float]]:
    """P(correct) at every step of every example (in order)."""
    s.model.eval()
    out: list[list[float]] = [[] for _ in examples]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), s.cfg.batch_size):
        idx = order[start : start + s.cfg.batch_size]
        b = s.to_device(collate_steps([examples[i] for i in idx], s.tokenizer.pad_token_id))
        with s.autocast():
            q = s.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().softmax(-1)[..., 1]
        for row, i in enumerate(idx):
            out[i] = [float(q[row, e]) for e in examples[i]["ends"]]
    return out


# ------------------------------------------------------------------ the recipe
def loop_spec(pad_id: int) -> LoopSpec:
    def loss_fn(s: Session, batch, normalizer):
        logits = s.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return step_classification_loss(logits, batch["targets"], batch["step_mask"], normalizer)

    return LoopSpec(collate=lambda ex: collate_steps(ex, pad_id), length=lambda e: len(e["input_ids"]),
                    count=lambda batch: int(batch["step_mask"].sum()), loss_fn=loss_fn)


def setup(cfg: PRMConfig) -> tuple[Session, LoopSpec]:
    from transformers import AutoModelForTokenClassification

    d = setup_device(cfg)
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train_ex, ev = load_step_splits(cfg, tok, d.rank)
    model = load_pretrained(AutoModelForTokenClassification, path, cfg, num_labels=2)
    model.config.classifier_dropout = cfg.classifier_dropout
    if isinstance(getattr(model, "dropout", None), torch.nn.Dropout):  # the head's dropout, built at init with 0.1
        model.dropout.p = cfg.classifier_dropout
    model.config.pad_token_id = tok.pad_token_id
    model = prepare_model(apply_lora(model, cfg, "TOKEN_CLS"), cfg, d)
    spec = loop_spec(tok.pad_token_id)
    s = Session(cfg, model, tok, train_ex, ev, d, autocast_dtype(cfg, d.device))
    return init_session(s, spec), spec


def train(s: Session, spec: LoopSpec) -> dict[str, float]:
    """The shared loop, then the step metrics on the held-out solutions."""
    metrics = fit(s, spec)
    if s.eval:
        found = step_metrics(predict(s, s.eval), [e["labels"] for e in s.eval])
        extra = {f"eval/{k}": v for k, v in found.items() if v is not None}
        if s.log is not None:
            s.log.log(s.position["step"], extra)
        metrics.update(extra)
    return metrics


cleanup = common.cleanup  # every recipe module offers setup, train, save, cleanup and main


def save(s: Session):
    out = save_final(s.model, s.tokenizer, s.run_dir / "final", s.cfg, s.dist.rank)
    if s.dist.rank == 0:
        write_prm_config(out, s.cfg.step_separator, StepSplitter(s.cfg.step_split, s.cfg.step_pattern),
                         soft_labels=s.cfg.soft_labels)
    return out


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    return recipe_main(load_config(PRMConfig, config_path, overrides), setup, train, save, "process reward model")
