"""Built-in trainers: SFT, Bradley-Terry reward model, DPO family, PPO, online DPO, GRPO and a process reward model.

``main(kind, config_path, overrides)`` is what ``rlaif train sft|rm|dpo|ppo|online-dpo|grpo|prm`` calls.
Importing this package does not import torch; each recipe does when it runs.
"""
from __future__ import annotations

import importlib

KINDS = ("sft", "rm", "dpo", "ppo", "online-dpo", "grpo", "prm")


def main(kind: str, config_path: str | None, overrides: list[str] | None = None) -> int:
    """Run recipe ``kind`` (one of :data:`KINDS`) from a YAML config plus ``key=value`` overrides.

    Returns a process exit code (0 on success).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trainer {kind!r}; expected one of {KINDS}")
    recipe = importlib.import_module(f"rlaif.train.{kind.replace('-', '_')}")
    return recipe.main(config_path, list(overrides or []))
