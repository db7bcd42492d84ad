"""A small verifiable task: arithmetic problems (single-digit sums, word problems), and their checker.

``problems(n, seed, kind)`` writes ``n`` problems (``{"id", "prompt", "answer"}``); ``check`` is a
reward function (``--reward-fn rlaif.reward.arithmetic:check``): 1.0 when the response's final
number equals the problem's answer, else 0.0. The answer is read back from the problem's own
text (every kind is written by one template whose numbers a regular expression recovers), so the
checker needs nothing but the prompt. The final number of a response is the one after its last
"answer is", else its last number.

Kinds (each prompt ends with an instruction to work one step per line):

* ``sum2``: "What is A + B?" (single digits);
* ``sum3``: "What is A + B + C?" (single digits);
* ``sum2ex``: sum2 after a worked example of the one-step-per-line form ("2 + 3 = 5", then "The
  answer is 5."), so that solutions have several steps;
* ``shop``: "A shop has A apples. It sells B of them and then gets C more. ..." (A - B + C);
* ``minutes``: "How many minutes are there in H hours and M minutes?" (60 H + M).

Measured one-try accuracy of the default model (SmolLM2-135M-Instruct, temperature 0.7, 32 problems,
up to 96 tokens): sum2 25%, sum3 3-12%, shop 0-9%. sum2's solutions are mostly one line (one step),
which leaves a PRM nothing to do; sum2ex measured 28% (16 problems x 4 samples, up to 48 tokens)
with 2.5 steps per solution on average, and its one-try accuracy on the benchmark's held-out
problems is in benchmarks/results/process.md. The same worked example before three numbers
measured 3%.
"""
from __future__ import annotations

import random
import re
from typing import Any, Sequence

INSTRUCTIONS = {"sum2": "Add the numbers one at a time, one step per line.", "sum3": "Add the numbers one at a time, one step per line.",
                "sum2ex": "Add the numbers, one step per line.",
                "shop": "Work it out one step per line.", "minutes": "Work it out one step per line."}
KINDS = {
    "shop": (r"A shop has (\d+) apples\. It sells (\d+) of them and then gets (\d+) more\. How many apples does it have now\?",
             "A shop has {a} apples. It sells {b} of them and then gets {c} more. How many apples does it have now?",
             lambda a, b, c: a - b + c),
    "sum3": (r"What is (\d+) \+ (\d+) \+ (\d+)\?", "What is {a} + {b} + {c}?", lambda a, b, c: a + b + c),
    "sum2ex": (r"What is (\d+) \+ (\d+)\?", "Example:\nWhat is 2 + 3?\n2 + 3 = 5\nThe answer is 5.\n\nNow solve:\nWhat is {a} + {b}?",
               lambda a, b: a + b),
    "sum2": (r"What is (\d+) \+ (\d+)\?", "What is {a} + {b}?", lambda a, b: a + b),
    "minutes": (r"How many minutes are there in (\d+) hours and (\d+) minutes\?",
                "How many minutes are there in {a} hours and {b} minutes?", lambda a, b: 60 * a + b),
}
_ANSWER = re.compile(r"answer is\s*:?\s*\$?(-?\d[\d,]*)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*")


def problems(n: int, seed: int = 0, kind: str = "shop") -> list[dict[str, Any]]:
    """``n`` problems of ``kind`` (seeded), each ``{"id", "prompt", "answer"}``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    rng = random.Random(f"{kind}:{seed}")
    _, text, fn = KINDS[kind]
    out = []
    for i in range(n):
        if kind == "shop":
            a = rng.randint(3, 12)
            args = {"a": a, "b": rng.randint(1, a - 1), "c": rng.randint(1, 6)}
        elif kind == "sum3":
            args = {"a": rng.randint(1, 9), "b": rng.randint(1, 9), "c": rng.randint(1, 9)}
        elif kind in ("sum2", "sum2ex"):
            args = {"a": rng.randint(1, 9), "b": rng.randint(1, 9)}
        else:
            args = {"a": rng.randint(1, 3), "b": rng.randint(1, 30)}
        out.append({"id": f"{kind}-{seed}-{i}", "prompt": f"{text.format(**args)} {INSTRUCTIONS[kind]}", "answer": fn(*args.values())})
    return out


def answer_of(prompt: str) -> int | None:
    """The answer of a problem this module wrote (None for any other text)."""
    for pattern, _, fn in KINDS.values():
        found = list(re.finditer(pattern, prompt))
        if found:  # the last: a worked example comes before the problem
            return fn(*(int(x) for x in found[-1].groups()))
    return None


def final_number(response: str) -> int | None:
    """The number after the last "answer is", else the last number; None when there is none."""
    found = _ANSWER.findall(response) or _NUMBER.findall(response)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


def check(prompts: Sequence[Sequence[dict]], responses: Sequence[str]) -> list[float]:
    """1.0 where the response's final number is the answer of the problem in the prompt's last user turn."""
    out = []
    for p, r in zip(prompts, responses):
        user = [m["content"] for m in p if m["role"] == "user"]
        want = answer_of(user[-1]) if user else None
        out.append(1.0 if want is not None and final_number(r) == want else 0.0)
    return out
