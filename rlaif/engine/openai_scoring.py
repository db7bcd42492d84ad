"""Option scoring through an OpenAI-compatible server (the AI-feedback labeller), matching :mod:`rlaif.engine.vllm_local`.

:class:`OptionScoring` is the half of :class:`rlaif.engine.openai_server.OpenAIServerEngine` that
turns a :class:`ScoreRequest` into option log-probabilities; it uses the engine's request,
mapping and provenance machinery (``_request``, ``_map``, ``_note_model``, ``breaker``).

The prompt is ``chat_template(messages, add_generation_prompt=True) + assistant_prefix``.
We do not have the tokenizer here, so the server applies the template: the request
carries ``messages`` plus a final assistant message holding ``assistant_prefix`` with the
vLLM extensions ``continue_final_message: true, add_generation_prompt: false`` (with an
empty prefix: ``add_generation_prompt: true`` and no extra message), ``max_tokens: 1``,
``temperature: 1``, ``top_p: 1``, ``logprobs: true`` and ``top_logprobs``.

The options' first tokens are found once per distinct ``assistant_prefix`` through vLLM's
``POST /tokenize`` (chat form, same template flags): tokenize the prompt ending in
``prefix`` and the prompt ending in ``prefix + option``; the option's first token is the
first token past the common part. Like the in-process engine, an option that merges with
the text before it, or two options sharing a first token, is an error. (The token ids are
computed on a one-message stand-in conversation; this is exact for every template whose
generation prompt does not depend on the conversation, i.e. all common ones.)

With the ids known, the scoring request adds ``allowed_token_ids`` (the options' first
tokens) and ``return_tokens_as_token_ids: true`` (top-logprob entries read
``"token_id:<id>"``), and the option log-probabilities are read from ``top_logprobs`` by
id and normalised over the options with :func:`normalise_logprobs`.

What vLLM 0.32's server does (checked against ``--model SmolLM2-135M-Instruct``):
``continue_final_message`` renders exactly ``template(add_generation_prompt) + prefix``
(checked token for token, trailing spaces and newlines included); ``/tokenize`` accepts
the chat form; ``allowed_token_ids`` restricts the sampled token; with
``--logprobs-mode processed_logprobs`` the returned log-probabilities are already
normalised over the allowed tokens (masked tokens read -9999.0, treated as -inf here);
with the default raw mode they are the unmasked log-probabilities, and normalising over
the options gives the same numbers as long as every option is among ``top_logprobs``
(at most 20, the server's default ``--max-logprobs``). An option missing from
``top_logprobs`` scores -inf; if all are missing the request gets an error.

Fallback: a server without ``/tokenize`` (404/405/501 there) is scored without
``allowed_token_ids`` and without token ids, matching ``top_logprobs`` entries by text
(the longest entry that is a prefix of the option). ``continue_final_message`` is still
needed for a non-empty ``assistant_prefix``; a server that rejects it answers 400, which
becomes the request's error.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from rlaif.engine.base import OptionScores, ScoreRequest, normalise_logprobs
from rlaif.engine.failures import GaveUp, Permanent
from rlaif.engine.structured import missing_logprobs, permanent_score_error

log = logging.getLogger(__name__)

#: Most ``top_logprobs`` vLLM serves by default (``--max-logprobs 20``) and the OpenAI API allows.
MAX_TOP_LOGPROBS = 20
#: vLLM reports masked tokens (outside ``allowed_token_ids``) with this log-probability.
_MASKED = -9999.0
#: A short conversation on which option tokens are computed (see the module docstring).
_STAND_IN = ({"role": "user", "content": "Hi"},)



class OptionScoring:
    """Option scoring for an engine that has ``_request``, ``_map``, ``_note_model``, ``breaker``, ``model``."""

    base_url: str
    model: str | None
    top_logprobs: int
    _option_cache: dict[tuple[str, tuple[str, ...]], Any]
    _tokenize_supported: bool | None

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        options = tuple(options)
        if not options:
            raise ValueError("score_options needs at least one option")
        requests = list(requests)
        if not requests:
            return []
        prefixes = sorted({r.assistant_prefix for r in requests})
        # Option token ids, once per distinct assistant prefix (a handful per batch).
        found = self._map(prefixes, lambda p: self._option_ids(p, options), "tokenize", show=False)
        ids_by_prefix = dict(zip(prefixes, found))
        return self._map(requests, lambda r: self._score_one(r, options, ids_by_prefix[r.assistant_prefix]), desc or "score")

    @staticmethod
    def _chat_body(messages: Sequence[Any], prefix: str) -> dict[str, Any]:
        msgs = [dict(m) for m in messages]
        if prefix:
            msgs.append({"role": "assistant", "content": prefix})
            return {"messages": msgs, "continue_final_message": True, "add_generation_prompt": False}
        return {"messages": msgs, "add_generation_prompt": True}

    async def _tokenize(self, prefix: str) -> list[int]:
        data = await self._request("POST", "/tokenize", {"model": self.model, **self._chat_body(_STAND_IN, prefix)})
        return [int(t) for t in data["tokens"]]

    async def _option_ids(self, prefix: str, options: tuple[str, ...]) -> list[int] | str | GaveUp | None:
        """First token id of each option after ``prefix``; an error message (GaveUp: for now); None without /tokenize."""
        key = (prefix, options)
        if key in self._option_cache:
            return self._option_cache[key]
        if self._tokenize_supported is False:
            return None
        try:
            base = await self._tokenize(prefix)
            ids = []
            for opt in options:
                full = await self._tokenize(prefix + opt)
                if full[: len(base)] != base or len(full) == len(base):
                    ids = f"option {opt!r} merges with the text before it; end the prompt so the option starts a token"
                    break
                ids.append(full[len(base)])
            if isinstance(ids, list) and len(set(ids)) != len(ids):
                ids = f"options {list(options)} share a first token"
            self._tokenize_supported = True
        except Permanent as exc:
            if exc.status in (404, 405, 501):
                log.warning("%s has no /tokenize; option scores come from top_logprobs matched by text", self.base_url)
                self._tokenize_supported = False
                return None
            ids = f"cannot tokenize the options: {exc}"
        except GaveUp as exc:
            return GaveUp(f"cannot tokenize the options: {exc}")  # not cached: the server may recover
        except (KeyError, TypeError, ValueError) as exc:
            ids = f"malformed /tokenize answer from the server: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - reported per request, never raised
            log.exception("unexpected error from %s/tokenize", self.base_url)
            return f"cannot tokenize the options: {exc!r}"
        self._option_cache[key] = ids
        return ids

    async def _score_one(self, req: ScoreRequest, options: tuple[str, ...], opt_ids: list[int] | str | GaveUp | None) -> OptionScores:
        if isinstance(opt_ids, GaveUp):  # failed for now, like the request would have: counted as one
            self.breaker.failed(str(opt_ids))
            return OptionScores((), 0, error=str(opt_ids), retryable=True)
        if isinstance(opt_ids, str):
            return OptionScores((), 0, error=opt_ids)
        body: dict[str, Any] = {
            "model": self.model,
            **self._chat_body(req.messages, req.assistant_prefix),
            "max_tokens": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": max(self.top_logprobs, min(len(options), MAX_TOP_LOGPROBS)),
        }
        if opt_ids is not None:
            body["allowed_token_ids"] = opt_ids
            body["return_tokens_as_token_ids"] = True
        try:
            data = await self._request("POST", "/v1/chat/completions", body)
            self._note_model(data)
            prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
            if missing := missing_logprobs(data):
                return OptionScores((), prompt_tokens, error=missing)
            first = data["choices"][0]["logprobs"]["content"][0]
            table: dict[str, float] = {}
            for entry in [first, *(first.get("top_logprobs") or [])]:
                lp = float(entry["logprob"])
                table[str(entry["token"])] = float("-inf") if lp <= _MASKED else lp
        except GaveUp as exc:
            return OptionScores((), 0, error=str(exc), retryable=True)
        except Permanent as exc:
            return OptionScores((), 0, error=permanent_score_error(exc))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return OptionScores((), 0, error=f"the server returned no usable logprobs: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - one bad request never fails the batch
            log.exception("unexpected error from %s", self.base_url)
            return OptionScores((), 0, error=f"unexpected error: {exc!r}")
        if opt_ids is not None:
            raw = [table.get(f"token_id:{t}", float("-inf")) for t in opt_ids]
        else:
            raw = [_match_by_text(table, opt) for opt in options]
        if all(x == float("-inf") for x in raw):
            return OptionScores(
                (), prompt_tokens,
                error=f"none of the options {list(options)} is among the {len(table)} top log-probabilities the server returned",
            )
        return OptionScores(normalise_logprobs(raw), prompt_tokens)


def _match_by_text(table: dict[str, float], option: str) -> float:
    """Fallback without token ids: the longest top-logprob token that starts the option."""
    best, best_len = float("-inf"), 0
    for tok, lp in table.items():
        if tok and option.startswith(tok) and len(tok) > best_len:
            best, best_len = lp, len(tok)
    return best


__all__ = ["OptionScoring", "MAX_TOP_LOGPROBS"]
