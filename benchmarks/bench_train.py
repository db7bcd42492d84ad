"""Training throughput and peak memory: rlaif's RM and DPO recipes against TRL's
RewardTrainer and DPOTrainer, on the same model, data, batch, sequence length and
precision, in one run. A benchmark script, not a test: it prints a table and ratios.

    python benchmarks/bench_train.py                      # small random-init model, CPU-sized
    python benchmarks/bench_train.py --model default      # the embedded SmolLM2-135M-Instruct
    python benchmarks/bench_train.py --model llama-0.5b --pairs 128 --batch-size 8 --seq-len 1024   # a GPU run

On CUDA the script also measures the bf16 matmul peak and reports model FLOPs utilisation
(MFU): tokens/s x 6N FLOPs per token (forward and backward of the trained model; N counts
every weight that takes part in a matmul, i.e. all parameters but the input embedding), over
that peak. With precomputed reference log-probs DPO runs no reference forward, so 6N is its
cost as well. ``--tokenizer`` names a tokenizer folder for the random-init presets where the
default model is not prepared (a GPU host without network access).

Each case runs in its own process, so peak memory is per case: on CUDA the peak
allocated during the training steps, on CPU the process's peak resident set
(model loading included, the same for both trainers). Throughput counts the real
(non-padding) tokens of chosen and rejected sequences per second of optimiser steps,
leaving out the first step (warm-up); on a shared CPU, tokens per CPU-second of the
process (all its threads) is steadier than wall-clock tokens/s. DPO uses precomputed reference log-probs in
both trainers; gradient checkpointing is off in both. "fixed" data has every pair
at the same length; "variable" data has lengths spread uniformly, where rlaif's
length-aware batching pads less.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part").split()


# --------------------------------------------------------------------- set-up
# Random-init Llama shapes (with the default model's 49,152-token vocabulary):
# small: CPU-sized; llama-0.5b: 0.55B parameters (untied); llama-1.3b: 1.4B parameters (untied).
PRESETS = {
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
    "llama-0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                       num_key_value_heads=4, tie_word_embeddings=False),
    "llama-1.3b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=16, tie_word_embeddings=False),
}


def make_random_model(out: Path, tokenizer_src: str, preset: str) -> dict[str, int]:
    """A random-init Llama of a preset shape; returns N per trainer, the parameters that take part
    in matmuls (DPO: the decoder and the LM head; RM: the decoder, whose score head is negligible)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **PRESETS[preset])
    with torch.device("meta"):
        n_total = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    emb = cfg.vocab_size * cfg.hidden_size
    n_lm = n_total - (0 if cfg.tie_word_embeddings else emb)  # a tied table is the LM head's matmul
    return {"dpo": n_lm, "rm": n_lm - emb}


def matmul_peak_tflops(device: str, dtype_name: str = "bfloat16", n: int = 8192, iters: int = 20) -> float:
    """Measured dense matmul throughput (TFLOP/s) of this accelerator, for MFU."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def make_data(out: Path, n: int, seq_len: int, variable: bool, seed: int = 0) -> None:
    """Conversational preference pairs of single-token words (about seq_len tokens per sequence)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompt_max, answer_max = seq_len // 4, (3 * seq_len) // 4 - 24  # room for the chat template's tokens

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for _ in range(n):
        p = rng.randint(4, prompt_max) if variable else prompt_max
        c = rng.randint(4, answer_max) if variable else answer_max
        r = rng.randint(4, answer_max) if variable else answer_max
        rows.append({"prompt": [{"role": "user", "content": text(p)}],
                     "chosen": [{"role": "assistant", "content": text(c)}],
                     "rejected": [{"role": "assistant", "content": text(r)}]})
    Dataset.from_list(rows).save_to_disk(str(out))


# -------------------------------------------------------------------- workers
def _peak_mem(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_rlaif(c: dict) -> dict:
    from rlaif.train import dpo, rm
    from rlaif.train.common import micro_batches, run_step
    from rlaif.train.config import load_config

    recipe = dpo if c["trainer"] == "dpo" else rm
    cls = dpo.DPOConfig if c["trainer"] == "dpo" else rm.RMConfig
    cfg = load_config(cls, None, [
        f"model={c['model']}", f"data={c['data']}", f"runs_dir={c['tmp']}", "name=bench", "resume=false",
        f"batch_size={c['batch_size']}", "grad_accum=1", "epochs=1", "eval_fraction=0", "lr=1e-6",
        f"max_length={c['max_length']}", f"max_prompt_length={c['max_length'] // 2}", f"precision={c['precision']}",
        "tensorboard=false", "warmup_steps=1", f"device={c['device']}", *c.get("overrides", []),
    ])
    s, spec = recipe.setup(cfg)
    groups = [[b] for b in micro_batches(s, spec, 0)]
    _reset_peak(c["device"])
    times, cpu, tokens, slots = [], [], [], []
    for g in groups:
        batch = spec.collate(g[0])
        slots.append(sum(int(batch[k].numel()) for k in ("prompt_ids", "completion_ids")) if "prompt_ids" in batch
                     else int(batch["input_ids"].numel()))
        _sync(c["device"])
        t0, c0 = time.perf_counter(), time.process_time()
        m = run_step(s, spec, g)
        _sync(c["device"])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        tokens.append(m["tokens"])
    return {"times": times, "cpu": cpu, "tokens": tokens, "slots": slots, "peak_gib": _peak_mem(c["device"])}


def run_trl(c: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from datasets import load_from_disk

    tok = AutoTokenizer.from_pretrained(c["model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = load_from_disk(c["data"])
    common = dict(
        output_dir=c["tmp"], per_device_train_batch_size=c["batch_size"], gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=1, max_grad_norm=1.0,
        bf16=c["precision"] == "bf16", gradient_checkpointing=False, logging_steps=10**6, report_to=[],
        save_strategy="no", use_cpu=c["device"] == "cpu", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        max_length=c["max_length"],
    )
    times, cpu, tokens, slots = [], [], [], []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            _reset_peak(c["device"])

        def on_step_begin(self, *a, **k):
            _sync(c["device"])
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            _sync(c["device"])
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)

    if c["trainer"] == "dpo":
        from trl import DPOConfig, DPOTrainer as Base

        model = AutoModelForCausalLM.from_pretrained(c["model"], dtype=torch.float32)
        args = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True)
    else:
        from trl import RewardConfig, RewardTrainer as Base

        model = AutoModelForSequenceClassification.from_pretrained(c["model"], num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(**common)

    class Counting(Base):
        def training_step(self, model, inputs, *rest, **kw):
            tokens.append(int(inputs["attention_mask"].sum()))
            slots.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kw)

    trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return {"times": times, "cpu": cpu, "tokens": tokens, "slots": slots, "peak_gib": _peak_mem(c["device"])}


def worker(c: dict) -> None:
    import torch

    torch.set_flush_denormal(True)
    out = run_trl(c) if c["impl"] == "trl" else run_rlaif(c)
    t, n, cpu = out["times"][1:], out["tokens"][1:], out["cpu"][1:]
    print("RESULT " + json.dumps({
        "tokens_per_s": sum(n) / sum(t), "step_s": sum(t) / len(t), "steps": len(out["times"]),
        "tokens_per_cpu_s": sum(n) / sum(cpu),
        "peak_gib": out["peak_gib"],
        # real tokens / token positions the model processed (padding, and a prompt processed twice, cost slots)
        "token_efficiency": sum(out["tokens"]) / max(sum(out["slots"]), 1),
    }), flush=True)


# --------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small",
                    help=f'a random-init preset {sorted(PRESETS)}, "default" (the embedded model), or a folder')
    ap.add_argument("--tokenizer", default="default", help="tokenizer for the random-init presets (a folder)")
    ap.add_argument("--trainers", default="rm,dpo")
    ap.add_argument("--pairs", type=int, default=24, help="pairs in the data set (one epoch is run)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256, help="longest prompt + completion, in tokens")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="run each case this often, alternating; report medians")
    ap.add_argument("--no-variants", action="store_true", help="skip the rlaif run without the shared prompt pass")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(json.loads(a.worker))

    import torch

    from rlaif.train.common import resolve_model_path

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = a.precision if a.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    root = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    model, n_matmul = a.model, None
    if model in PRESETS:
        model = str(root / f"{a.model}-model")
        n_matmul = make_random_model(Path(model), resolve_model_path(a.tokenizer), a.model)
        print(f"random-init {a.model}: N = {n_matmul['dpo'] / 1e9:.3f}B parameters in matmuls with the LM head, "
              f"{n_matmul['rm'] / 1e9:.3f}B without")
    else:
        model = resolve_model_path(model)
    peak = None
    if device == "cuda":
        peak = matmul_peak_tflops(device, "bfloat16" if precision == "bf16" else "float32")
        print(f"measured {'bf16' if precision == 'bf16' else 'fp32'} matmul peak: {peak:.0f} TFLOP/s "
              f"({torch.cuda.get_device_name()})")
    for kind in ("fixed", "variable"):
        make_data(root / kind, a.pairs, a.seq_len, kind == "variable")
    print(f"model={a.model} device={device} precision={precision} pairs={a.pairs} batch={a.batch_size} "
          f"seq_len={a.seq_len} repeats={a.repeats} (medians) torch={torch.__version__}")
    rows = []
    for trainer in a.trainers.split(","):
        # rlaif also runs without its shared prompt pass, to show what that pass is worth
        variants = {"rlaif": [], "rlaif, prompt not shared": ["shared_prompt=false"], "trl": []}
        if a.no_variants:
            variants.pop("rlaif, prompt not shared")
        for kind in ("fixed", "variable"):
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for rep in range(a.repeats):  # alternate, so that load changes hit both alike
                for impl, overrides in variants.items():
                    c = {"trainer": trainer, "impl": "trl" if impl == "trl" else "rlaif", "model": model,
                         "data": str(root / kind), "tmp": str(root / f"run-{trainer}-{kind}-{len(runs[impl])}-{rep}-{impl[:5]}"),
                         "batch_size": a.batch_size, "max_length": a.seq_len + 64, "precision": precision,
                         "device": device, "overrides": overrides}
                    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(c)], capture_output=True,
                                       text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                    if p.returncode != 0 or not line:
                        print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                        raise SystemExit(f"{impl} {trainer} {kind} failed")
                    runs[impl].append(json.loads(line[0][7:]))
            res = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items()}
            for impl in variants:
                if impl != "trl":
                    rows.append((trainer if impl == "rlaif" else f"{trainer} ({impl[7:]})", kind, res[impl], res["trl"]))
    mem = "peak GiB (CUDA alloc)" if device == "cuda" else "peak RSS GiB"
    print(f"\n| trainer | data | rlaif tok/s | TRL tok/s | ratio | rlaif tok/CPU-s | TRL tok/CPU-s | ratio "
          f"| rlaif s/step | TRL s/step | rlaif {mem} | TRL {mem} | ratio | rlaif tokens/slots | TRL tokens/slots |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for trainer, kind, ours, trl in rows:
        print(f"| {trainer} | {kind} | {ours['tokens_per_s']:.0f} | {trl['tokens_per_s']:.0f} | "
              f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x | {ours['tokens_per_cpu_s']:.0f} | "
              f"{trl['tokens_per_cpu_s']:.0f} | {ours['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}x | "
              f"{ours['step_s']:.3f} | {trl['step_s']:.3f} | {ours['peak_gib']:.2f} | {trl['peak_gib']:.2f} | "
              f"{ours['peak_gib'] / trl['peak_gib']:.2f}x | {ours['token_efficiency']:.2f} | {trl['token_efficiency']:.2f} |")
    if peak and n_matmul:
        # MFU from real tokens only: padding costs time but earns nothing
        print(f"\n| trainer | data | rlaif MFU | TRL MFU |  (6N FLOPs per real token, peak {peak:.0f} TFLOP/s)")
        print("|---|---|---:|---:|")
        for trainer, kind, ours, trl in rows:
            n = n_matmul["rm" if trainer.startswith("rm") else "dpo"]
            mfu = [r["tokens_per_s"] * 6 * n / (peak * 1e12) for r in (ours, trl)]
            print(f"| {trainer} | {kind} | {mfu[0]:.1%} | {mfu[1]:.1%} |")


if __name__ == "__main__":
    main()
