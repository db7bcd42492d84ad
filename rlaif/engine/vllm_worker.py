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
        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embed is None or getattr(head, "weight", None) is not getattr(embed, "weight", None):
            return
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
