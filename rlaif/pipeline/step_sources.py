"""What ``rlaif label-steps`` labels and how: solutions (read, or sampled), and the three sources of
step labels for one chunk of them.

* **judge** (:mod:`rlaif.reward.judge`): the constitution judge asked about each step, pointwise.
* **Monte-Carlo completion** (Math-Shepherd, Wang et al. 2024, sec. 3.3): from the prefix that ends
  with step i (i < n), ``k`` continuations are sampled (one seeded request each, continuing the
  partial answer) and every completed solution, prefix + continuation, is scored by the reward
  function; a continuation is correct when its reward is >= ``threshold``. The soft label of step i
  is the share of correct continuations ("soft estimation"), the hard label whether any is correct
  ("hard estimation"). The last step is the solution itself: its label is the solution's own
  correctness (score 1 or 0), with nothing sampled.
* **implicit** (:mod:`rlaif.reward.implicit`): step rewards of a DPO model against its reference.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlaif.data.records import Completion, Message, PromptRecord
from rlaif.data.steps import StepSplitter, join_steps
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig
from rlaif.reward import implicit
from rlaif.reward.functions import score
from rlaif.seeds import derive_seed

SOURCES = ("judge", "mc", "implicit")


@dataclass(frozen=True)
class Solution:
    """One solution to label: its text and where each step lies in it."""

    id: str
    prompt_id: str
    prompt: tuple[Message, ...]
    text: str
    spans: tuple[tuple[int, int], ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def steps(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    def prefix(self, i: int) -> str:
        """The text up to where step ``i + 1`` starts (0-based ``i``): steps 0..i and the separator after them."""
        return self.text[: self.spans[i + 1][0]] if i + 1 < len(self.spans) else self.text

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "prompt_id": self.prompt_id, "prompt": [dict(m) for m in self.prompt], "text": self.text,
                "spans": [list(s) for s in self.spans], "category": str(self.meta.get("category", ""))}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Solution":
        return cls(row["id"], row["prompt_id"], tuple(row["prompt"]), row["text"], tuple(tuple(s) for s in row["spans"]),
                   {"category": row.get("category", "")})


@dataclass(frozen=True)
class MCSettings:
    k: int = 4
    """Continuations sampled from each step prefix."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256))
    threshold: float = 1.0
    """A continuation is correct when its reward is >= threshold."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")


def solution_from(prompt: PromptRecord, sid: str, text: str | None, steps: Sequence[str] | None, splitter: StepSplitter) -> Solution:
    """A solution from its text (cut by ``splitter``) or from its steps (joined with newlines)."""
    if steps is not None:
        text, spans = join_steps(list(steps))
    else:
        spans = splitter.spans(text or "")
    return Solution(sid, prompt.id, prompt.messages, text or "", tuple(spans), dict(prompt.meta))


def read_solutions(path: str | Path, splitter: StepSplitter, limit: int | None = None) -> list[Solution]:
    """Rows with ``prompt`` (or ``messages``) and ``response`` (a text, cut into steps) or ``completions``
    (the steps); optional ``id`` and ``category``."""
    from rlaif.data.prompts import PromptError, read_prompts

    prompts = read_prompts(path, limit=limit)
    raw = _raw_rows(Path(path).expanduser(), len(prompts))
    out = []
    for i, (rec, obj) in enumerate(zip(prompts, raw)):
        where = f"{path}: solution {i + 1}"
        steps = obj.get("completions")
        if steps is not None and (not isinstance(steps, list) or not all(isinstance(s, str) for s in steps)):
            raise PromptError(f"{where}: 'completions' must be a list of step strings")
        text = obj.get("response")
        if steps is None and not isinstance(text, str):
            raise PromptError(f"{where}: needs a 'response' text or 'completions' (a list of steps); "
                              "to sample solutions give a prompt file with --prompts and --samples")
        sol = solution_from(rec, rec.id, text, steps, splitter)
        if not sol.spans:
            raise PromptError(f"{where}: the solution has no steps")
        out.append(sol)
    return out


def _raw_rows(path: Path, n: int) -> list[dict[str, Any]]:
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train" if "train" in ds else next(iter(ds))]
        return [dict(ds[i]) for i in range(n)]
    from rlaif.data import textio

    return [json.loads(line) for _, line in textio.lines(textio.read_text(path))][:n]


def solve(engine: Engine, wanted: Sequence[tuple[PromptRecord, int]], sampling: SamplingConfig, seed: int,
          splitter: StepSplitter) -> tuple[list[Solution], list[tuple[str, PromptRecord, Completion]]]:
    """Sample solution ``k`` of every ``(prompt, k)`` in ``wanted`` (one seeded request each, one batched call);
    the failed requests apart as ``(solution id, prompt, completion)``."""
    ids = [(p, f"{p.id}:{k}", derive_seed(seed, p.id, k, "solve")) for p, k in wanted]
    outs = engine.generate([ChatRequest(p.messages, s) for p, _, s in ids], sampling, desc="solve")
    good, bad = [], []
    for (p, sid, _), o in zip(ids, outs):
        if o.ok:
            good.append(solution_from(p, sid, o.text, None, splitter))
        else:
            bad.append((sid, p, o))
    return good, bad


def mc_label(engine: Engine, reward_fn: Callable, solutions: Sequence[Solution], s: MCSettings, seed: int,
             desc: str = "monte-carlo") -> list[dict[str, Any]]:
    """Monte-Carlo step labels of every solution (see the module docstring): per solution
    ``{"step_scores", "labels", "mc_correct", "continuation_tokens"}`` or ``{"error", "retryable"}``."""
    jobs, reqs = [], []
    for j, sol in enumerate(solutions):
        for i in range(len(sol.spans) - 1):
            for c in range(s.k):
                jobs.append((j, i))
                reqs.append(ChatRequest(sol.prompt, derive_seed(seed, sol.id, i, c, "mc"), assistant_prefix=sol.prefix(i)))
    outs = engine.generate(reqs, s.sampling, desc=desc) if reqs else []
    failed: dict[int, Completion] = {}
    texts, owners = [], []
    for (j, i), o in zip(jobs, outs):
        if not o.ok:
            failed.setdefault(j, o)
            continue
        owners.append((j, i, o.completion_tokens))
        texts.append((solutions[j].prompt, solutions[j].prefix(i) + o.text))
    # the solutions themselves give their last step's label
    finals = [(sol.prompt, sol.text) for sol in solutions]
    all_items = texts + finals
    rewards = score(reward_fn, [list(p) for p, _ in all_items], [t for _, t in all_items]).tolist() if all_items else []
    correct: dict[int, list[int]] = {j: [0] * max(len(sol.spans) - 1, 0) for j, sol in enumerate(solutions)}
    tokens = [0] * len(solutions)
    for (j, i, n), r in zip(owners, rewards[: len(texts)]):
        correct[j][i] += r >= s.threshold
        tokens[j] += n
    out = []
    for j, sol in enumerate(solutions):
        if j in failed:
            out.append({"error": failed[j].error, "retryable": any(o.retryable for (jj, _), o in zip(jobs, outs) if jj == j and not o.ok)})
            continue
        final_ok = rewards[len(texts) + j] >= s.threshold
        soft = [c / s.k for c in correct[j]] + [1.0 if final_ok else 0.0]
        out.append({"step_scores": soft, "labels": [x > 0 for x in soft], "mc_correct": correct[j] + [int(final_ok)],
                    "continuation_tokens": tokens[j]})
    return out


def implicit_label(policy: Engine, reference: Engine, solutions: Sequence[Solution], beta: float) -> list[dict[str, Any]]:
    """Implicit step rewards of every solution (answers scored as ended): per solution
    ``{"step_scores", "labels", "step_rewards"}`` or ``{"error"}`` where the answer does not fit a context."""
    for engine in (policy, reference):
        if not callable(getattr(engine, "response_logprobs", None)):
            raise ValueError(f"--source implicit needs log-probabilities of given answers, which the {type(engine).__name__} "
                             "backend cannot give; use --backend vllm or transformers")
    convs = [list(s.prompt) for s in solutions]
    texts = [s.text for s in solutions]
    ended = [True] * len(solutions)
    lp_pi = policy.response_logprobs(convs, texts, ended)
    lp_ref = reference.response_logprobs(convs, texts, ended)
    out = []
    for sol, a, b in zip(solutions, lp_pi, lp_ref):
        if a is None or b is None:
            out.append({"error": "the prompt and answer do not fit the model's context", "retryable": False})
            continue
        owners = implicit.token_steps(implicit.token_spans(policy, sol.text), sol.spans, len(a))
        r = implicit.step_rewards(a, b, owners, len(sol.spans), beta)
        scores = [implicit.sigmoid(x) for x in r]
        out.append({"step_scores": scores, "labels": [x > 0 for x in r], "step_rewards": r})
    return out


def text_prompt(messages: Sequence[Message]) -> str:
    """TRL's stepwise rows hold a plain-text prompt: the user's turn when the conversation is one user
    turn (after an optional system prompt), else the conversation as "User: ... / Assistant: ..." lines."""
    from rlaif.data.quoting import render_conversation

    turns = [m for m in messages if m["role"] != "system"]
    return turns[0]["content"] if len(turns) == 1 else render_conversation(messages)


def solutions_sha256(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
