"""The dataset rows rlaif writes, defined once.

Every dataset rlaif produces is in TRL's conversational format: an SFT row is ``messages``
(the prompt's turns plus one assistant turn), a preference row is ``prompt`` / ``chosen`` /
``rejected`` (``chosen`` and ``rejected`` hold one assistant turn each) with a
``label_source`` saying who decided: ``"revision"`` (critique and revision: the final
revision wins), ``"ai"`` (the feedback model's label), ``"reward-model"`` (best-of-N),
``"west-of-n"`` (best vs worst of a prompt's samples under a reward, Pace et al. 2024),
``"rlcd"`` (the answer to a positive vs a negative system prompt, Yang et al. 2023) or
``"human"`` (a person's rating in ``rlaif review``, made the label by ``rlaif export --prefer
human``, which keeps the label it replaced beside it: see :mod:`rlaif.pipeline.gold`).
Each producer adds its own provenance columns (``extra``); the core below is the same for
``generate``, ``label`` and ``bon``, and the Hugging Face ``Features`` are built from the
same place so that the parquet/Arrow schema and the rows cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

LABEL_SOURCES = ("revision", "ai", "reward-model", "west-of-n", "rlcd", "human")
PREFERENCE_CORE = ("prompt", "chosen", "rejected", "label_source")
SFT_CORE = ("messages",)


def turn(text: str, role: str = "assistant") -> dict[str, str]:
    return {"role": role, "content": text}


def copy_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(m) for m in messages]


def sft_row(prompt: Iterable[Mapping[str, Any]], response: str, **extra: Any) -> dict[str, Any]:
    """Conversational SFT row: the prompt's turns and the response as the last assistant turn."""
    return {"messages": [*copy_messages(prompt), turn(response)], **extra}


def preference_row(prompt: Iterable[Mapping[str, Any]], chosen: str, rejected: str, label_source: str,
                   **extra: Any) -> dict[str, Any]:
    """Conversational preference row (TRL's ``prompt``/``chosen``/``rejected``)."""
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, not {label_source!r}")
    return {"prompt": copy_messages(prompt), "chosen": [turn(chosen)], "rejected": [turn(rejected)],
            "label_source": label_source, **extra}


def relabelled_row(row: Mapping[str, Any], label_source: str, **changes: Any) -> dict[str, Any]:
    """A copy of a preference row whose label now comes from ``label_source``, with ``changes``."""
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, not {label_source!r}")
    return {**row, **changes, "label_source": label_source}


def messages_feature():
    from datasets import Value

    return [{"role": Value("string"), "content": Value("string")}]


def sft_features(extra: Mapping[str, Any] | None = None):
    from datasets import Features

    return Features({"messages": messages_feature(), **(extra or {})})


def preference_features(extra: Mapping[str, Any] | None = None):
    from datasets import Features, Value

    return Features({"prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature(),
                     "label_source": Value("string"), **(extra or {})})
