"""Training data: loading, format detection, chat templating, truncation (batching and collation:
:mod:`rlaif.train.batches`, whose names are importable from here too).

Accepted without conversion:

* rlaif run folders (``runs/<name>/`` -> its ``sft/`` or ``preferences/``), folders
  written by ``datasets.Dataset.save_to_disk``, and ``.jsonl`` / ``.json`` / ``.parquet``
  files;
* preference rows in TRL's formats: explicit prompt (``prompt``/``chosen``/``rejected``)
  or implicit prompt (``chosen``/``rejected`` full conversations or strings), each
  conversational (lists of ``{"role", "content"}``) or standard (strings), with
  optional ``chosen_prob`` (AI probability that chosen is better) and ``margin`` (the
  labeller's preference level, 0-3 in rlaif's rows, Llama 2's margin in reward units);
  best-of-N rows carry their reward difference as ``reward_gap``, which is not a margin
  (rows written before that column was renamed hold it under ``margin`` with
  ``label_source: reward-model``; that value is ignored);
* SFT rows: ``messages`` (loss on assistant turns only), ``prompt``/``completion``
  (conversational or standard; loss on the completion), or ``text`` (loss on all).

Conversations are rendered with the tokenizer's chat template; a completion is the
text the template adds after the prompt rendered with ``add_generation_prompt``.
Standard (string) completions get the EOS token appended, as TRL does.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .batches import (  # noqa: F401  (the recipes and tests import the batching from here)
    chosen_first, collate_pairs, collate_pairs_shared_prompt, collate_sft, describe_lengths, length_grouped_batches,
    length_summary, pair_length, pair_length_metrics,
)

Messages = list[dict[str, Any]]


# ---------------------------------------------------------------------- loading
def resolve_data_path(path: str | Path, kind: str) -> Path:
    """Map a run folder to its ``sft/`` or ``preferences/`` dataset; other paths pass through."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data path not found: {p}")
    sub = {"sft": "sft", "preference": "preferences"}[kind]
    if p.is_dir() and not _is_saved_dataset(p) and (p / sub).is_dir():
        return p / sub
    return p


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists()


def load_rows(path: str | Path, kind: str):
    """Load a ``datasets.Dataset`` from a run folder, a saved dataset, or a file."""
    import datasets

    p = resolve_data_path(path, kind)
    if p.is_dir():
        if not _is_saved_dataset(p):
            raise ValueError(f"{p} is neither a run folder with {kind} data nor a saved dataset")
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"{p} holds splits {list(ds)}; expected 'train'")
            ds = ds["train"]
        return ds
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=str(p), split="train")
    if suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(p), split="train")
    raise ValueError(f"unsupported data file {p} (expected .jsonl, .json, .parquet or a dataset folder)")


# ------------------------------------------------------------------ row formats
@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair, prompt made explicit. Text fields are strings or message lists."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    chosen_prob: float = 1.0
    margin: float = 0.0


def _is_conv(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m for m in x)


def _common_message_prefix(a: Messages, b: Messages) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_text_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    # end the prompt at a word boundary so the completion starts with its whitespace
    while n > 0 and not a[n - 1].isspace() and n < len(a) and not a[n].isspace():
        n -= 1
    if n > 0 and a[n - 1] == " ":  # as TRL: the completion keeps its leading space
        n -= 1
    return n


def to_preference_example(row: dict[str, Any]) -> PreferenceExample:
    """Read a preference row in any accepted format (see module docstring)."""
    if "chosen" not in row or "rejected" not in row:
        raise ValueError(f"preference row needs 'chosen' and 'rejected'; got keys {sorted(row)}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if prompt is None:  # implicit prompt: split at the longest shared prefix
        if _is_conv(chosen) and _is_conv(rejected):
            n = _common_message_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        else:
            n = _common_text_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if _is_conv(prompt) != _is_conv(chosen) or _is_conv(chosen) != _is_conv(rejected):
        raise ValueError("prompt, chosen and rejected must all be conversations or all be strings")
    p = row.get("chosen_prob")
    p = 1.0 if p is None else float(p)
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"chosen_prob must lie in [0, 1], got {p}")
    m = row.get("margin")
    if row.get("label_source") == "reward-model" and "reward_gap" not in row:
        m = None  # an older best-of-N row: its "margin" is a reward difference, not a level
    m = 0.0 if m is None else float(m)
    if not m >= 0.0 or math.isinf(m):
        raise ValueError(f"margin must be a finite number >= 0 (the labeller's preference level), got {m}")
    return PreferenceExample(prompt, chosen, rejected, p, m)


# --------------------------------------------------------------- tokenisation
def _render(tok, messages: Messages, add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def _prefix_error(what: str) -> ValueError:
    return ValueError(
        f"the chat template does not render {what} as a prefix of the longer conversation, so "
        "completion tokens cannot be located; use a template that renders conversations incrementally"
    )


def encode_prompt_completion(tok, prompt: str | Messages, completion: str | Messages) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the completion the model is trained on."""
    if _is_conv(prompt):
        head = _render(tok, prompt, add_generation_prompt=True)
        full = _render(tok, list(prompt) + list(completion), add_generation_prompt=False)
        if not full.startswith(head):
            raise _prefix_error("the prompt")
        return _ids(tok, head), _ids(tok, full[len(head):])
    ids = _ids(tok, completion)
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return _ids(tok, prompt), ids


def encode_conversation(tok, messages: Messages) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a 0/1 mask that is 1 on assistant turns.

    The conversation is rendered at every assistant turn's start (with the
    generation prompt) and end; the text between is the turn the model writes,
    including the template's end-of-turn marker so that the model learns to stop.
    """
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for k, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        head = _render(tok, messages[:k], add_generation_prompt=True)
        full = _render(tok, messages[: k + 1], add_generation_prompt=False)
        if not head.startswith(done) or not full.startswith(head):
            raise _prefix_error(f"turn {k}")
        for text, flag in ((head[len(done):], 0), (full[len(head):], 1)):
            seg = _ids(tok, text)
            ids += seg
            mask += [flag] * len(seg)
        done = full
    rest = _render(tok, messages, add_generation_prompt=False)
    if not rest.startswith(done):
        raise _prefix_error("the conversation")
    seg = _ids(tok, rest[len(done):])
    return ids + seg, mask + [0] * len(seg)


# ------------------------------------------------------------------ truncation
@dataclass(frozen=True)
class Truncation:
    """Explicit truncation policy.

    ``max_length`` bounds prompt + completion tokens; ``max_prompt_length`` bounds the
    prompt, which keeps its *last* tokens (those next to the answer). The completion
    is then cut at the end. ``mode="drop"`` instead skips any example that would need
    cutting.
    """

    max_length: int = 1024
    max_prompt_length: int = 512
    mode: str = "truncate"

    def __post_init__(self):
        if self.mode not in ("truncate", "drop"):
            raise ValueError("truncation mode must be 'truncate' or 'drop'")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError("need 0 < max_prompt_length < max_length")


def truncate_pair(
    prompt: list[int], completions: Sequence[list[int]], policy: Truncation
) -> tuple[list[int], list[list[int]]] | None:
    """Apply ``policy`` to a prompt shared by one or more completions; None means drop."""
    too_long = len(prompt) > policy.max_prompt_length or any(
        len(prompt) + len(c) > policy.max_length for c in completions
    )
    if not too_long:
        return prompt, [list(c) for c in completions]
    if policy.mode == "drop":
        return None
    prompt = prompt[-policy.max_prompt_length:] if len(prompt) > policy.max_prompt_length else prompt
    room = policy.max_length - len(prompt)
    return prompt, [list(c[:room]) for c in completions]


def truncate_sequence(ids: list[int], mask: list[int], policy: Truncation):
    """A whole conversation keeps its first ``max_length`` tokens; None means drop.

    (Multi-turn conversations are cut at the end, so earlier turns keep their context.)
    """
    if len(ids) <= policy.max_length:
        return ids, mask
    if policy.mode == "drop":
        return None
    return ids[: policy.max_length], mask[: policy.max_length]


# -------------------------------------------------------------- tokenised sets
def _group_key(prompt: Any) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, default=str).encode()).hexdigest()


def tokenize_preferences(rows, tok, policy: Truncation) -> tuple[list[dict], dict[str, int]]:
    """Tokenise preference rows into ``{"prompt", "chosen", "rejected", "chosen_prob", "margin", "group"}``.

    Returns the examples and counts of truncated / dropped rows.
    """
    out, stats = [], {"rows": 0, "truncated": 0, "dropped": 0}
    for row in rows:
        stats["rows"] += 1
        ex = to_preference_example(row)
        p, c = encode_prompt_completion(tok, ex.prompt, ex.chosen)
        p2, r = encode_prompt_completion(tok, ex.prompt, ex.rejected)
        if p2 != p:
            raise ValueError("prompt tokenises differently with chosen and rejected")
        cut = truncate_pair(p, [c, r], policy)
        if cut is None:
            stats["dropped"] += 1
            continue
        if cut[0] != p or cut[1] != [c, r]:
            stats["truncated"] += 1
        out.append({
            "prompt": cut[0], "chosen": cut[1][0], "rejected": cut[1][1],
            "chosen_prob": ex.chosen_prob, "margin": ex.margin, "group": _group_key(ex.prompt),
        })
    return out, stats


def tokenize_sft(rows, tok, policy: Truncation) -> tuple[list[dict], dict[str, int]]:
    """Tokenise SFT rows into ``{"input_ids", "loss_mask", "group"}``."""
    out, stats = [], {"rows": 0, "truncated": 0, "dropped": 0}
    for row in rows:
        stats["rows"] += 1
        if row.get("messages") is not None:
            ids, mask = encode_conversation(tok, row["messages"])
            group = row.get("prompt_id") or _group_key([m for m in row["messages"] if m["role"] != "assistant"])
        elif row.get("completion") is not None:
            p, c = encode_prompt_completion(tok, row["prompt"], row["completion"])
            cut = truncate_pair(p, [c], policy)
            if cut is None:
                stats["dropped"] += 1
                continue
            stats["truncated"] += cut[0] != p or cut[1][0] != c
            ids, mask = cut[0] + cut[1][0], [0] * len(cut[0]) + [1] * len(cut[1][0])
            out.append({"input_ids": ids, "loss_mask": mask, "group": _group_key(row["prompt"])})
            continue
        elif row.get("text") is not None:
            ids = _ids(tok, row["text"])
            mask, group = [1] * len(ids), _group_key(row["text"])
        else:
            raise ValueError(f"SFT row needs 'messages', 'prompt'+'completion' or 'text'; got {sorted(row)}")
        cut = truncate_sequence(ids, mask, policy)
        if cut is None or not any(cut[1]):  # nothing left to train on
            stats["dropped"] += 1
            continue
        stats["truncated"] += len(cut[0]) != len(ids)
        out.append({"input_ids": cut[0], "loss_mask": cut[1], "group": str(group)})
    return out, stats


def split_eval(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the prompts (all pairs of a prompt go to the same side)."""
    if fraction <= 0:
        return examples, []
    groups = sorted({e["group"] for e in examples})
    random.Random(seed).shuffle(groups)
    n_eval = max(1, round(fraction * len(groups)))
    if n_eval >= len(groups):
        raise ValueError("eval_fraction leaves no training prompts")
    held = set(groups[:n_eval])
    return [e for e in examples if e["group"] not in held], [e for e in examples if e["group"] in held]


def fingerprint(examples: list[dict], keys: Sequence[str]) -> str:
    """SHA-256 of the token ids under ``keys``, in order: identifies a tokenised data set."""
    h = hashlib.sha256()
    for e in examples:
        for k in keys:
            h.update(json.dumps(e[k]).encode())
            h.update(b"|")
        h.update(b"\n")
    return h.hexdigest()
