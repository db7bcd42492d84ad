"""Verdicts from judges that return no log-probabilities: ``--verdict sampled``.

rlaif reads a label from the option tokens' log-probabilities (one prefill). Many judges people use
do not return them (Anthropic's API, OpenAI's reasoning models, many gateways). With
``--verdict sampled`` every option-scoring request of the judge is answered instead by sampling the
judge's verdict K times (``--verdict-samples K``) and counting the votes:

* **What is asked.** The same conversation and question as with log-probabilities, plus one line
  saying how to answer: JSON only (``--verdict-format json``: ``{"answer": "A"}``, checked with
  ``jsonschema`` against a schema whose ``answer`` is one of the options and that allows no other
  key) or the option alone (``--verdict-format letter``: the whole answer, stripped of white space,
  must be one option). Where the backend can enforce it (vLLM in process or as a server, an
  OpenAI-style ``response_format``) the format is also sent as a grammar, a JSON schema or a choice
  of one token (:mod:`rlaif.engine.structured`); ``--no-verdict-grammar`` leaves it out for a server
  that refuses it. The text is checked either way.
* **Sampling.** Temperature 1, top-p 1, one seeded request per vote (the seed derives from the
  request's text, the vote's index and the attempt, never from a batch position). At temperature 1
  each vote is a draw from the judge's own distribution over the options, so the vote share
  estimates the very probability the log-prob mode reads.
* **The estimate and its prior.** With v_i votes for option i out of K valid ones and n options,
  P(option i) = (v_i + 1) / (K + n): the posterior mean under a uniform Dirichlet(1, ..., 1) prior
  (for two options, Beta(1, 1): Laplace's rule of succession). Why this prior: it assumes nothing
  about which option the judge prefers (it is symmetric, so it cannot favour a position), it is the
  prior that gives equal weight to every value of P, and it keeps the estimate strictly inside (0, 1):
  with K = 4 unanimous votes give 5/6, not 1, so the log-odds that length control fits and the
  Brier score stay finite and one small sample does not claim certainty. As K grows the prior's
  weight (n pseudo-votes) vanishes and the estimate tends to the judge's probability.
* **Malformed verdicts** (not JSON, not valid under the schema, not exactly one option) are no
  vote. Each is counted apart and asked again with a new seed, up to ``--verdict-retries`` more
  times per missing vote; a comparison that still lacks K valid votes fails (its pair is recorded
  as failed with the reason, never labelled from fewer votes). Counts are kept per pair
  (``malformed`` in ``labels.jsonl``) and per run (``verdicts`` in ``manifest.json``).

Everything downstream is unchanged, because the wrapper answers the engine's ``score_options``:
both orders, the ensemble, CoT (the reasoning is asked for first as with log-probs; the verdict is
then asked in one more user turn), ties, the judge diagnostics and warnings, and length control.
``rlaif eval``'s yes/no checks are answered the same way.

:func:`check_scores` turns a scoring error that says the server returned no log-probabilities into
:class:`NoLogprobsError`, naming the flag, so a run stops at once with one line instead of
recording every pair as failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from rlaif.data.records import Message
from rlaif.engine.base import NO_LOGPROBS, ChatRequest, Engine, OptionScores, OutputConstraint, SamplingConfig, ScoreRequest
from rlaif.seeds import derive_seed

VERDICT_MODES = ("logprobs", "sampled")
VERDICT_FORMATS = ("json", "letter")
ANSWER_KEY = "answer"
FINAL_TURN = "Now give your final answer."


class NoLogprobsError(ValueError):
    """The judge's server returns no log-probabilities: label with ``--verdict sampled``."""


@dataclass(frozen=True)
class VerdictSettings:
    """How sampled verdicts are asked for (the ``verdict_*`` fields of :class:`rlaif.pipeline.judge.LabelSettings`)."""

    samples: int = 4
    """Valid votes per comparison (K)."""
    format: str = "json"
    """'json' ({"answer": "A"}, checked against a JSON schema) or 'letter' (the option alone)."""
    grammar: bool = True
    """Send the format as a grammar where the backend enforces one."""
    retries: int = 2
    """Times a malformed vote is asked again (with a new seed)."""
    max_tokens: int = 32
    """Most tokens of one verdict (the JSON verdict takes about 7 on common tokenizers)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("verdict_samples must be >= 1")
        if self.format not in VERDICT_FORMATS:
            raise ValueError(f"verdict_format must be one of {list(VERDICT_FORMATS)}, got {self.format!r}")
        if self.retries < 0:
            raise ValueError("verdict_retries must be >= 0")
        if self.max_tokens < 1:
            raise ValueError("verdict_max_tokens must be >= 1")


def verdict_schema(options: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a verdict: an object whose only key ``answer`` is one of the options."""
    return {"type": "object", "properties": {ANSWER_KEY: {"type": "string", "enum": list(options)}},
            "required": [ANSWER_KEY], "additionalProperties": False}


def _either(options: Sequence[str], show) -> str:
    shown = [show(o) for o in options]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def format_instruction(options: Sequence[str], fmt: str) -> str:
    """The line appended to the question: how the verdict is to be written."""
    if fmt == "json":
        return "Reply with JSON only, exactly " + _either(options, lambda o: json.dumps({ANSWER_KEY: o})) + "."
    return f"Reply with {_either(options, str)} only, nothing else."


def parse_verdict(text: str, options: Sequence[str], fmt: str) -> str | None:
    """The option a verdict names, or None when it is malformed.

    json: the first JSON object in the text (code fences and words around it are ignored) must be
    valid under :func:`verdict_schema`; letter: the whole text, stripped of white space, must be an option.
    """
    if fmt == "letter":
        answer = text.strip()
        return answer if answer in options else None
    import jsonschema

    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
        jsonschema.validate(value, verdict_schema(options))
    except (ValueError, jsonschema.ValidationError):
        return None
    return value[ANSWER_KEY]


def vote_probabilities(votes: Sequence[int]) -> tuple[float, ...]:
    """P(option i) = (v_i + 1) / (K + n): the posterior mean under a uniform Dirichlet prior."""
    total = sum(votes) + len(votes)
    return tuple((v + 1) / total for v in votes)


def verdict_conversation(req: ScoreRequest, options: Sequence[str], fmt: str) -> tuple[Message, ...]:
    """The chat a sampled verdict answers: the scoring request's conversation with the format line
    appended to its last user turn, or (a request that continues an assistant prefix, e.g. CoT
    reasoning) the prefix as an assistant turn and one more user turn asking for the final answer."""
    msgs = [dict(m) for m in req.messages]
    line = format_instruction(options, fmt)
    prefix = re.sub(r"\s*Answer:\s*$", "", req.assistant_prefix).strip()
    if prefix:
        msgs += [{"role": "assistant", "content": prefix}, {"role": "user", "content": f"{FINAL_TURN} {line}"}]
    else:
        msgs[-1] = {**msgs[-1], "content": f"{msgs[-1]['content']}\n{line}"}
    return tuple(msgs)  # type: ignore[arg-type]


@dataclass
class _Tally:
    conversation: tuple[Message, ...]
    key: str
    tag: str
    votes: list[int]
    malformed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retryable: bool = False


class SampledVerdicts:
    """An engine whose ``score_options`` samples verdicts from the wrapped engine (everything else passes through)."""

    def __init__(self, engine: Engine, settings: VerdictSettings):
        self.inner, self.settings = engine, settings
        self.model = engine.model

    def __getattr__(self, name: str) -> Any:  # reported_models, info, response_logprobs, ...
        return getattr(self.inner, name)

    def generate(self, requests, sampling, desc: str = ""):
        return self.inner.generate(requests, sampling, desc=desc)

    def close(self) -> None:
        self.inner.close()

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        s = self.settings
        labels = [o.strip() for o in options]
        if len(set(labels)) != len(labels) or not all(labels):
            raise ValueError(f"options {list(options)} are not distinct once stripped")
        constraint = None
        if s.grammar:
            constraint = (OutputConstraint(choice=tuple(labels)) if s.format == "letter"
                          else OutputConstraint(json_schema=json.dumps(verdict_schema(labels), sort_keys=True)))
        sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=s.max_tokens)
        tallies = []
        for r in requests:
            conv = verdict_conversation(r, labels, s.format)
            key = hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()
            tallies.append(_Tally(conv, key, r.tag, [0] * len(labels)))
        # Round 0 asks K votes of every request; each later round asks again for the votes still missing.
        for attempt in range(s.retries + 1):
            asks = [(t, j) for t in tallies if t.error is None for j in range(s.samples - sum(t.votes))]
            if not asks:
                break
            reqs = [ChatRequest(t.conversation, derive_seed(s.seed, "verdict", t.key, j, attempt), tag=t.tag, constraint=constraint)
                    for t, j in asks]
            name = desc or "verdicts"
            for (t, _), out in zip(asks, self.inner.generate(reqs, sampling, desc=name if not attempt else f"{name} (again)")):
                t.prompt_tokens += out.prompt_tokens
                t.output_tokens += out.completion_tokens
                if not out.ok:
                    t.error, t.retryable = t.error or out.error, t.retryable or out.retryable
                    continue
                answer = parse_verdict(out.text, labels, s.format)
                if answer is None:
                    t.malformed += 1
                else:
                    t.votes[labels.index(answer)] += 1
        return [self._scores(t) for t in tallies]

    def _scores(self, t: _Tally) -> OptionScores:
        import math

        s = self.settings
        common = {"votes": tuple(t.votes), "malformed": t.malformed, "output_tokens": t.output_tokens}
        if t.error is not None:
            return OptionScores((), t.prompt_tokens, error=t.error, retryable=t.retryable, **common)
        if sum(t.votes) < s.samples:
            return OptionScores((), t.prompt_tokens, **common, error=(
                f"malformed verdicts: {t.malformed} answers failed the {s.format} check; {sum(t.votes)} of "
                f"{s.samples} valid votes after {s.retries} retries"))
        return OptionScores(tuple(math.log(p) for p in vote_probabilities(t.votes)), t.prompt_tokens, **common)


def judge_engine(engine: Engine, label_settings: Any) -> Engine:
    """The engine the labeller scores with: ``engine`` itself for log-prob verdicts, else wrapped in
    :class:`SampledVerdicts` (once: a wrapped engine is returned as it is)."""
    if getattr(label_settings, "verdict", "logprobs") != "sampled" or isinstance(engine, SampledVerdicts):
        return engine
    return SampledVerdicts(engine, settings_of(label_settings))


def settings_of(label_settings: Any) -> VerdictSettings:
    """The :class:`VerdictSettings` held by a :class:`rlaif.pipeline.judge.LabelSettings`."""
    ls = label_settings
    return VerdictSettings(ls.verdict_samples, ls.verdict_format, ls.verdict_grammar, ls.verdict_retries,
                           ls.verdict_max_tokens, ls.seed)


def check_scores(scores: Sequence[OptionScores], model: str) -> None:
    """Raise :class:`NoLogprobsError` when a scoring answer says the server gave no log-probabilities."""
    for sc in scores:
        if sc.error and sc.error.startswith(NO_LOGPROBS):
            raise NoLogprobsError(f"the judge {model!r} returns no log-probabilities, so labels cannot be read from them; "
                                  "ask for sampled verdicts with --verdict sampled (label.verdict=sampled)")


def verdict_report(labels: Sequence[Any], label_settings: Any) -> dict[str, Any] | None:
    """Per run (``verdicts`` in the manifest; None for log-prob verdicts): the verdict settings,
    malformed verdicts (each asked again), the pairs that had any, and the pairs that failed for them."""
    if getattr(label_settings, "verdict", "logprobs") != "sampled":
        return None
    return {"samples": label_settings.verdict_samples, "format": label_settings.verdict_format,
            "grammar": label_settings.verdict_grammar, "prior": "Dirichlet(1): P = (votes + 1) / (K + options)",
            "malformed": sum(getattr(l, "malformed", 0) for l in labels),
            "pairs_with_malformed": sum(getattr(l, "malformed", 0) > 0 for l in labels),
            "failed_malformed": sum(bool(l.error and l.error.startswith("malformed verdicts")) for l in labels)}


def verdict_lines(manifest: dict[str, Any]) -> list[tuple[str, bool]]:
    """What a run says about its sampled verdicts: (line, is a warning); [] for a log-prob run."""
    info = manifest.get("verdicts")
    if not info:
        return []
    out = [(f"sampled verdicts: {info['samples']} valid votes per comparison ({info['format']}"
            f"{', grammar' if info['grammar'] else ''}); malformed {info['malformed']} in {info['pairs_with_malformed']} pairs "
            f"(asked again); pairs failed for malformed verdicts {info['failed_malformed']}", False)]
    if info["failed_malformed"]:
        out.append((f"warning: {info['failed_malformed']} pairs got too few well-formed verdicts and are recorded as failed; "
                    "try --verdict-format json with the grammar on, more --verdict-retries, or a larger --verdict-max-tokens", True))
    return out


def print_verdict_lines(manifest: dict[str, Any]) -> None:
    """Print :func:`verdict_lines`: the summary on stdout, warnings on stderr with the ``rlaif:`` prefix."""
    import sys

    for line, warn in verdict_lines(manifest):
        print(f"rlaif: {line}", file=sys.stderr) if warn else print(line)


VERDICT_FIELDS = ("verdict", "verdict_samples", "verdict_format", "verdict_grammar", "verdict_retries", "verdict_max_tokens")
"""The labelling settings this module added. Run folders made before them recorded none, so a
settings record leaves them out at their defaults (:func:`without_default_verdict`): an older run
folder keeps its fingerprint and resumes; a sampled-verdict run's fingerprint differs."""


def without_default_verdict(label: dict[str, Any]) -> dict[str, Any]:
    """A label settings record (``asdict`` of a LabelSettings) without the verdict fields when the
    verdict is read from log-probabilities, the only mode before they existed: the other verdict
    fields do not act then."""
    if label.get("verdict", "logprobs") != "logprobs":
        return label
    return {k: v for k, v in label.items() if k not in VERDICT_FIELDS}
