"""The model a recipe trains, on this process's device: loading (tokenizer, weights, LoRA),
devices and processes (torchrun), FSDP2 / DDP wrapping, mixed precision, and saving the final
model in Hugging Face format. :mod:`rlaif.train.common` (the step loop) and the recipes use these.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig


# ----------------------------------------------------------------- models
def resolve_model_path(spec: str) -> str:
    """A model folder for ``spec``: an existing path as is, else ``rlaif.models.model_zoo``."""
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser())
    try:
        from rlaif.models.model_zoo import resolve_model
    except ImportError as e:
        raise FileNotFoundError(f"model {spec!r} is not a folder and rlaif.models.model_zoo is unavailable") from e
    got = resolve_model(spec)
    return str(getattr(got, "path", got))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def apply_lora(model, cfg: TrainConfig, task_type: str):
    """Wrap ``model`` with peft LoRA adapters when ``cfg.lora.enabled``."""
    if not cfg.lora.enabled:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("lora.enabled needs peft: pip install 'rlaif[train]'") from e
    lc = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type=task_type,
    )
    return get_peft_model(model, lc)


def unwrap(model):
    return getattr(model, "module", model)


def save_dtype(cfg: TrainConfig, model) -> torch.dtype:
    """The dtype of the final weights: as configured, or the starting model's (recorded at load)."""
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if cfg.save_dtype != "auto":
        return named[cfg.save_dtype]
    src = getattr(model, "_rlaif_source_dtype", None)
    return getattr(torch, str(src).removeprefix("torch."), torch.float32) if src else torch.float32


def load_pretrained(auto_cls, path: str, cfg: TrainConfig, **kw):
    """``auto_cls.from_pretrained`` in float32 (the master weights), remembering the stored dtype."""
    import json

    stored = None
    cfg_file = Path(path) / "config.json"
    if cfg_file.exists():
        raw = json.loads(cfg_file.read_text())
        stored = raw.get("dtype") or raw.get("torch_dtype")
    model = auto_cls.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32, **kw)
    model._rlaif_source_dtype = stored  # on the module, not the config, so it is never saved
    return model


def save_final(model, tokenizer, out: Path, cfg: TrainConfig, rank: int = 0) -> Path:
    """Write the model in Hugging Face format (safetensors) with its tokenizer."""
    state = None
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    if cfg.lora.enabled and cfg.lora.merge_on_save and state is None:
        m = m.merge_and_unload()
    dtype = save_dtype(cfg, m)
    if state is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    else:
        m = m.to(dtype)  # training is over: cast in place
    if hasattr(m, "config"):
        m.config.dtype = dtype
    m.save_pretrained(str(out), safe_serialization=True, state_dict=state)
    tokenizer.save_pretrained(str(out))
    return out


# ------------------------------------------------------- device / processes
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def setup_device(cfg: TrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        return Dist(dist.get_rank(), world, dev)
    # Adam's second moments underflow into denormal floats, which x86 CPUs process
    # ~100x slower; flushing them to zero changes nothing measurable in training.
    torch.set_flush_denormal(True)
    if cfg.device == "auto":
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return Dist(device=torch.device(cfg.device))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def is_fsdp(model) -> bool:
    return type(model).__name__.startswith("FSDP")


def wrap_parallel(model, cfg: TrainConfig, d: Dist):
    """Shard with FSDP2 (each decoder layer, then the root) or replicate with DDP."""
    if d.world == 1:
        return model
    if cfg.parallel in ("auto", "fsdp"):
        from torch.distributed.fsdp import fully_shard

        layer_names = set(getattr(unwrap(model), "_no_split_modules", None) or [])
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layer_names |= set(getattr(base, "_no_split_modules", None) or [])
        for mod in model.modules():
            if type(mod).__name__ in layer_names:
                fully_shard(mod)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def prepare_model(model, cfg: TrainConfig, d: Dist):
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False
    return wrap_parallel(model.to(d.device), cfg, d)


def autocast_context(d: Dist, amp: torch.dtype | None):
    """Mixed-precision context for the session's device, or a no-op when ``amp`` is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(d.device.type, dtype=amp)
