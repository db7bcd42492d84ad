"""One optimiser step of a recipe, run by ``tests/train/test_distributed.py`` alone or under torchrun.

``python dist_worker.py OUT MODEL DATA KIND:PARALLEL ... -- key=value ...`` builds each recipe's
session exactly as ``rlaif train`` does, takes the micro-batches of its first step
(:func:`rlaif.train.common.micro_batches`, this process's share), runs :func:`run_step` and
writes, from process 0 only, ``OUT/<kind>-<parallel>.json`` (the step's metrics) and
``OUT/<kind>-<parallel>.safetensors`` (every parameter's gradient as the optimiser saw it,
gathered in full, and every parameter after the step). The process group stays up between the
cases and is closed at the end.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float().cpu().clone()


def one_step(out: Path, model: str, data: str, kind: str, parallel: str, extra: list[str]) -> None:
    from rlaif.train.common import micro_batches, run_step, unwrap
    from rlaif.train.config import load_config

    recipe = importlib.import_module(f"rlaif.train.{kind}")
    config_cls = {"sft": "SFTConfig", "rm": "RMConfig", "dpo": "DPOConfig", "prm": "PRMConfig"}[kind]
    cfg = load_config(getattr(recipe, config_cls), None, [
        f"model={model}", f"data={data}", f"runs_dir={out / 'runs'}", f"name={kind}-{parallel}", f"parallel={parallel}",
        "eval_fraction=0", "tensorboard=false", "lr=1e-3", "warmup_steps=0", "lr_schedule=constant", "resume=false", *extra,
    ])
    s, spec = recipe.setup(cfg)
    named = [(n, p) for n, p in unwrap(s.model).named_parameters() if p.requires_grad]
    grads: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):  # after clipping, before the update; a collective under FSDP2
        for n, p in named:
            grads[f"grad/{n}"] = full(p.grad)

    s.optimizer.register_step_pre_hook(capture)
    group = micro_batches(s, spec, 0)[: cfg.grad_accum]
    metrics = run_step(s, spec, group)
    after = {f"param/{n}": full(p) for n, p in named}
    if s.dist.rank == 0:
        (out / f"{kind}-{parallel}.json").write_text(json.dumps({**metrics, "world": s.dist.world}))
        save_file({**grads, **after}, str(out / f"{kind}-{parallel}.safetensors"))


def main(argv: list[str]) -> None:
    sep = argv.index("--") if "--" in argv else len(argv)
    out, model, data, *cases = argv[:sep]
    extra = argv[sep + 1:]
    for case in cases:
        kind, parallel = case.split(":")
        one_step(Path(out), model, data, kind, parallel, extra)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
