"""``--estimate``: what a whole run will cost, from a seeded pilot, before starting it.

``rlaif generate|label|eval ... --estimate [--estimate-pilot N]`` runs the very same command on N
items (prompts, or pairs for ``label``) drawn at random without replacement, seeded by the run's
seed, into a temporary folder that is deleted afterwards, and prints one table projecting the
whole run. Nothing else is started and nothing is written to ``--out``.

**What is measured.** Every engine the command starts is wrapped in a meter (:class:`MeteredEngine`).
Each request carries the item it works for (``ChatRequest.tag`` / ``ScoreRequest.tag``: the prompt
or pair id), so per item and per stage (the engine call's name: response, critique, revision,
label, policy answers, compare, checks, ...) the meter adds up requests, prompt tokens and output
tokens (as the engine reports them; a log-prob scoring request counts one output token, the one
token it is scored at), and engine seconds (each call's wall time shared among its requests in
proportion to their tokens). Requests without a tag (none today but log-prob scoring of given
answers in ``rlaif eval``) are shared equally among the pilot's items. Engine start-up (the time to
build each engine) is kept apart: it is paid once, whatever the run's size.

**The projection.** For a quantity with per-item values x_1..x_n over the pilot's n items, of the
run's N items, the total is projected as N * mean(x) with the 95% interval
N * (mean(x) +- t(0.975, n - 1) * s / sqrt(n) * sqrt(1 - n / N)): Student's t for the mean of a
simple random sample, with the finite-population correction (a pilot of every item has an interval
of width 0: the totals are then known exactly). Wall time is start-up plus the projected engine
seconds. With ``--price-per-mtok IN,OUT`` each item's cost (prompt tokens x IN + output tokens x OUT
per million) is projected the same way; with ``--gpu-hour-price P``, wall hours x P.

**What it cannot see.** The pilot batches N items where the run batches up to ``--chunk-size``
(engines that batch, such as vLLM, are faster per item on big batches, so the wall-time projection
leans high); time outside the engines (saving datasets, a reward model in ``rlaif eval``) is not
counted; a server's queue and rate limits are as they were during the pilot.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rlaif.engine.base import Engine
from rlaif.pipeline.intervals import mean_interval, t_quantile
from rlaif.seeds import derive_seed

QUANTITIES = ("requests", "prompt_tokens", "output_tokens", "seconds")
DEFAULT_PILOT = 12


def stage_name(desc: str) -> str:
    """The stage of an engine call from its progress name: "chunk 2/5 critique 1/2" -> "critique"."""
    desc = re.sub(r"^chunk \d+/\d+ ", "", desc or "")
    desc = re.sub(r" \(again\)$", "", desc)
    return re.sub(r" \d+/\d+$", "", desc).strip() or "other"


@dataclass
class Meter:
    """What every metered engine of one pilot did: per (stage, item) totals, and start-up seconds per engine."""

    totals: dict[tuple[str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: dict.fromkeys(QUANTITIES, 0.0)))
    startup_s: list[tuple[str, float]] = field(default_factory=list)

    def add(self, stage: str, tags: Sequence[str], counts: Sequence[tuple[int, int]], seconds: float) -> None:
        """One engine call: its requests' (prompt tokens, output tokens), its item tags, its wall time."""
        weights = [max(p + o, 1) for p, o in counts]
        total = sum(weights) or 1
        for tag, (p, o), w in zip(tags, counts, weights):
            cell = self.totals[(stage, tag)]
            cell["requests"] += 1
            cell["prompt_tokens"] += p
            cell["output_tokens"] += o
            cell["seconds"] += seconds * w / total

    def wrap(self, factory: Callable[[], Engine] | None, role: str) -> Callable[[], Engine] | None:
        """A factory that starts the engine, times its start-up, and meters it."""
        if factory is None:
            return None

        def start() -> Engine:
            t0 = time.perf_counter()
            engine = factory()
            self.startup_s.append((role, time.perf_counter() - t0))
            return MeteredEngine(engine, self)  # type: ignore[return-value]

        return start


class MeteredEngine:
    """An engine that records every call in a :class:`Meter` (everything else passes through)."""

    def __init__(self, engine: Engine, meter: Meter):
        self.inner, self.meter, self.model = engine, meter, engine.model

    def __getattr__(self, name: str) -> Any:  # reported_models, info, max_model_len, ...
        return getattr(self.inner, name)

    def generate(self, requests, sampling, desc: str = ""):
        t0 = time.perf_counter()
        outs = self.inner.generate(requests, sampling, desc=desc)
        self.meter.add(stage_name(desc), [r.tag for r in requests], [(o.prompt_tokens, o.completion_tokens) for o in outs],
                       time.perf_counter() - t0)
        return outs

    def score_options(self, requests, options, desc: str = ""):
        t0 = time.perf_counter()
        outs = self.inner.score_options(requests, options, desc=desc)
        self.meter.add(stage_name(desc or "score"), [r.tag for r in requests],
                       [(s.prompt_tokens, max(s.output_tokens, 1)) for s in outs], time.perf_counter() - t0)
        return outs

    def response_logprobs(self, conversations, responses, ended):
        t0 = time.perf_counter()
        out = self.inner.response_logprobs(conversations, responses, ended)
        self.meter.add("score answers", [""] * len(responses), [(len(lp or ()), 0) for lp in out], time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ the projection (pure)


def project_total(values: Sequence[float], population: int) -> tuple[float, float, float]:
    """(projected total, low, high) over ``population`` items from a simple random sample's per-item values."""
    n = len(values)
    mean = sum(values) / n
    if n >= population:
        return population * mean, population * mean, population * mean
    if n < 2:
        return population * mean, float("nan"), float("nan")
    sd = mean_interval(values)["sd"]
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n) * math.sqrt(1 - n / population)
    return population * mean, population * max(mean - half, 0.0), population * (mean + half)


def pilot_indices(total: int, n: int, seed: int) -> list[int]:
    """Which items the pilot takes: ``n`` of ``total`` without replacement, seeded, in their file order."""
    if n >= total:
        return list(range(total))
    return sorted(random.Random(derive_seed(seed, "estimate")).sample(range(total), n))


def item_of(tag: str, items: Sequence[str]) -> str | None:
    """The pilot item a request's tag names: the item id itself, or a longer id built on it
    ("p3#0" for sample 0 of prompt p3, "p3#0:initial~final" for its pair)."""
    if tag in items:
        return tag
    found = [i for i in items if tag.startswith(i) and tag[len(i):len(i) + 1] in ("#", ":", "~")]
    return max(found, key=len) if found else None


def project(meter: Meter, items: Sequence[str], population: int) -> dict[str, Any]:
    """The projection of a pilot's meter to ``population`` items (see the module docstring)."""
    stages = list(dict.fromkeys(s for s, _ in meter.totals))  # in the order the run first used them
    per_item: dict[str, dict[str, list[float]]] = {}
    for stage in stages:
        cells = {i: dict.fromkeys(QUANTITIES, 0.0) for i in items}
        spread = dict.fromkeys(QUANTITIES, 0.0)
        for (s, tag), cell in meter.totals.items():
            if s != stage:
                continue
            target = item_of(tag, items)
            for q in QUANTITIES:
                if target is None:
                    spread[q] += cell[q]
                else:
                    cells[target][q] += cell[q]
        per_item[stage] = {q: [cells[i][q] + spread[q] / len(items) for i in items] for q in QUANTITIES}
    all_q = {q: [sum(per_item[s][q][k] for s in stages) for k in range(len(items))] for q in QUANTITIES}
    out = {"items": len(items), "population": population, "startup_s": sum(s for _, s in meter.startup_s),
           "engines": [r for r, _ in meter.startup_s],
           "stages": {s: {q: project_total(v, population) for q, v in per_item[s].items()} for s in stages},
           "total": {q: project_total(v, population) for q, v in all_q.items()}, "per_item": all_q}
    return out


def with_costs(projection: dict[str, Any], price_per_mtok: tuple[float, float] | None, gpu_hour_price: float | None) -> dict[str, Any]:
    """Add projected costs: per million prompt / output tokens, and per GPU hour of wall time."""
    per = projection["per_item"]
    pop, start = projection["population"], projection["startup_s"]
    costs = {}
    if price_per_mtok is not None:
        tin, tout = price_per_mtok
        costs["tokens"] = project_total([(p * tin + o * tout) / 1e6 for p, o in zip(per["prompt_tokens"], per["output_tokens"])], pop)
    if gpu_hour_price is not None:
        lo_hi = project_total(per["seconds"], pop)
        costs["gpu_hours"] = tuple((start + x) / 3600 * gpu_hour_price for x in lo_hi)
    return {**projection, "costs": costs}


# ------------------------------------------------------------------ the table


def _num(x: float, real: bool = False) -> str:
    """Counts as integers with thousands separators; seconds and money with three significant digits."""
    if x != x:
        return "n/a"
    if not real or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _cell(v: tuple[float, float, float], real: bool = False) -> str:
    mid, lo, hi = v
    if lo == hi == mid:
        return f"{_num(mid, real)} (exact)"
    return f"{_num(mid, real)} [{_num(lo, real)}, {_num(hi, real)}]"


def format_estimate(p: dict[str, Any], command: str, unit: str = "items") -> str:
    """The one table ``--estimate`` prints."""
    lines = [f"estimate for rlaif {command}: {p['population']} {unit}, projected from a pilot of {p['items']} "
             f"(seeded, in a temporary folder); 95% intervals",
             "", f"{'stage':<16}{'requests':>22}{'prompt tokens':>30}{'output tokens':>28}"]
    for stage, q in [*p["stages"].items(), ("total", p["total"])]:
        lines.append(f"{stage:<16}{_cell(q['requests']):>22}{_cell(q['prompt_tokens']):>30}{_cell(q['output_tokens']):>28}")
    sec = p["total"]["seconds"]
    wall = tuple(p["startup_s"] + x for x in sec)
    per_item = tuple(x / p["population"] for x in sec)
    lines += ["", f"wall time on this engine  {_cell(wall, True)} s = start-up {_num(p['startup_s'], True)} s "
                  f"({', '.join(p['engines']) or 'no engine started'}; paid once) + {_cell(per_item, True)} s per {unit[:-1]}"]
    costs = p.get("costs") or {}
    if "tokens" in costs:
        lines.append(f"cost of tokens            {_cell(costs['tokens'], True)}")
    if "gpu_hours" in costs:
        lines.append(f"cost of engine hours      {_cell(costs['gpu_hours'], True)}")
    return "\n".join(lines)


def parse_price(text: str | None) -> tuple[float, float] | None:
    """``--price-per-mtok IN,OUT`` -> (IN, OUT); ValueError naming the flag."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        tin, tout = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--price-per-mtok takes IN,OUT (prices per million prompt and output tokens), not {text!r}") from None
    if tin < 0 or tout < 0:
        raise ValueError("--price-per-mtok: prices must be >= 0")
    return tin, tout
