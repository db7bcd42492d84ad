"""Code that runs inside vLLM's worker processes (named to vLLM as ``worker_extension_cls``).

It imports nothing at module level: vLLM loads it into its workers by name.
"""

from __future__ import annotations


class WeightSyncExtension:
    """Extra worker methods for weight hand-over from a trainer."""

    def rlaif_reload_weights(self, weights_path: str) -> None:
        """Reload every weight in place from a folder of safetensors files.

        vLLM's CPU backend packs each linear layer's weight into a kernel-specific copy at load
        time, and ``reload_weights`` repacks only the layers it loads. A language-model head
        tied to the input embeddings loads nothing of its own, so its packed copy would keep
        the old weights: repack it here. (On GPU the repack is a no-op.)
        """
        import logging

        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        tied = head is not None and embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", None)
        # vLLM warns "<layer>: Failed to load weights" for every layer the checkpoint has nothing for: the
        # rotary embedding (its cos/sin cache is computed, never stored) and a head tied to the embeddings
        # (repacked below). Those two are expected on every sync; any other layer still warns.
        expected = {"RotaryEmbedding", *(("ParallelLMHead",) if tied else ())}
        quiet = _DropExpected(expected)
        layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        layerwise.addFilter(quiet)
        try:
            self.reload_weights(weights_path=weights_path)
        finally:
            layerwise.removeFilter(quiet)
        if not tied:
            return
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)


class _DropExpected:
    """A logging filter that drops vLLM's "Failed to load weights" line for the named layer classes."""

    def __init__(self, layers) -> None:
        self.layers = set(layers)

    def filter(self, record) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "%s: Failed to load weights" and args[:1] and args[0] in self.layers)
