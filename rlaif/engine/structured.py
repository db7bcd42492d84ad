"""How each backend is asked for structured output (:class:`rlaif.engine.base.OutputConstraint`).

* OpenAI-compatible servers: a JSON schema goes as the standard ``response_format``
  (``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``), which OpenAI, vLLM
  and many gateways enforce and others ignore; a choice goes as vLLM's own
  ``structured_outputs: {"choice": [...]}`` (vLLM 0.32's chat API; a server without it answers 400,
  see ``--no-verdict-grammar``).
* In-process vLLM: ``SamplingParams(structured_outputs=StructuredOutputsParams(json=... | choice=...))``
  (the CPU platform supports it).
* transformers and the fake engine ignore the constraint: the text is checked by the caller anyway.
"""

from __future__ import annotations

import json
from typing import Any

from rlaif.engine.base import NO_LOGPROBS, OutputConstraint


def openai_fields(constraint: OutputConstraint | None) -> dict[str, Any]:
    """Body fields of a chat completion request that carry ``constraint`` ({} for none)."""
    if constraint is None:
        return {}
    if constraint.choice:
        return {"structured_outputs": {"choice": list(constraint.choice)}}
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "verdict", "schema": json.loads(constraint.json_schema), "strict": True}}}


def vllm_fields(vllm_module: Any, constraint: OutputConstraint | None) -> dict[str, Any]:
    """Keyword arguments of vLLM's ``SamplingParams`` that carry ``constraint`` ({} for none).

    ``vllm_module`` is the imported ``vllm`` package (only the vLLM backends import it).
    """
    if constraint is None:
        return {}
    params = vllm_module.sampling_params.StructuredOutputsParams
    if constraint.choice:
        return {"structured_outputs": params(choice=list(constraint.choice))}
    return {"structured_outputs": params(json=json.loads(constraint.json_schema))}


def missing_logprobs(data: dict[str, Any]) -> str | None:
    """The scoring error for a chat completion answered without log-probabilities (None when it has them)."""
    if (data["choices"][0].get("logprobs") or {}).get("content"):
        return None
    return f"{NO_LOGPROBS} (label with --verdict sampled)"


def permanent_score_error(exc: Exception) -> str:
    """The scoring error for a request refused for good; a 400 about logprobs names the flag to use."""
    if getattr(exc, "status", None) == 400 and "logprob" in str(exc).lower():  # "logprobs is not supported with this model"
        return f"{NO_LOGPROBS}: {exc} (label with --verdict sampled)"
    return str(exc)
