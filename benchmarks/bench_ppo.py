"""PPO rollouts and one PPO iteration: vLLM in-process against transformers ``generate``.

1. **Rollouts.** The same prompts (chat-templated), batch, sampling (temperature 1, no
   top-k / top-p) and response length (exactly ``--max-tokens`` new tokens: end tokens are
   ignored) through vLLM (with the per-token log-probs PPO needs) and through
   transformers ``generate`` on a float32 model (the trainer's copy), timed in the same run
   after one warm-up call each.
2. **Weight sync.** Seconds to load the trainer's weights into the running engine.
3. **One PPO iteration** of ``rlaif.train.ppo`` on the same engine: time spent in rollout,
   scoring (reward model + policy / reference / critic forward passes), update and sync.
   The reward model is the policy's backbone with a fresh one-label head (a stand-in of
   the same size as a trained one; its scores are meaningless, its cost is not).

    python benchmarks/bench_ppo.py [--model default] [--prompts 16] [--max-tokens 64]

Prints one table and, with ``--out FILE``, saves the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _prompt_ids(tok, n: int) -> list[list[int]]:
    from rlaif.data.prompts import read_prompts

    recs = read_prompts(ROOT / "prompts" / "rlaif-prompts.jsonl", limit=n)
    return [tok(tok.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for r in recs]


def bench_vllm(engine, prompts, max_tokens: int, seed: int = 0) -> float:
    params = [engine._vllm.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, ignore_eos=True,
                                          logprobs=0, seed=seed + i) for i in range(len(prompts))]
    t0 = time.perf_counter()
    outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
    return dt


def bench_hf(model, tok, prompts, max_tokens: int, batch: int) -> float:
    import torch

    pad = tok.pad_token_id
    t0 = time.perf_counter()
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo : lo + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])  # left padding for generation
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 min_new_tokens=max_tokens, max_new_tokens=max_tokens, pad_token_id=pad)
        assert out.shape[1] - width == max_tokens
    return time.perf_counter() - t0


def make_reward_model(policy_path: str, folder: Path) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_path)
    rm = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"default" or a model folder')
    ap.add_argument("--prompts", type=int, default=16, help="rollouts per batch")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per response")
    ap.add_argument("--hf-batch", type=int, default=16, help="transformers generate batch size")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each rollout backend (median reported)")
    ap.add_argument("--iterations", type=int, default=2, help="PPO iterations (the last one is reported)")
    ap.add_argument("--kv-cache-gib", type=float, default=0.5)
    ap.add_argument("--dtype", default="float32", help="vLLM dtype (the trainer is float32)")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()

    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.models.model_zoo import resolve_model
    from rlaif.train import ppo, rollout
    from rlaif.train.config import load_config

    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = _prompt_ids(tok, args.prompts)
    engine = VLLMEngine(path, EngineConfig(max_model_len=1024, kv_cache_gib=args.kv_cache_gib, dtype=args.dtype),
                        show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    bench_vllm(engine, prompts[:2], 8)  # warm-up
    bench_hf(model, tok, prompts[:2], 8, args.hf_batch)
    t_vllm, t_hf = [], []
    for r in range(args.repeats):  # alternate, so that a burst of load on the host hits both
        t_vllm.append(bench_vllm(engine, prompts, args.max_tokens, seed=100 * r))
        t_hf.append(bench_hf(model, tok, prompts, args.max_tokens, args.hf_batch))
    vllm_s, hf_s = statistics.median(t_vllm), statistics.median(t_hf)
    tokens = len(prompts) * args.max_tokens
    sync_s = statistics.median(rollout.sync_weights(engine, model) for _ in range(3))
    del model

    with tempfile.TemporaryDirectory(prefix="rlaif-bench-ppo-") as tmp:
        rm = make_reward_model(path, Path(tmp) / "rm")
        data = Path(tmp) / "prompts.jsonl"
        data.write_text((ROOT / "prompts" / "rlaif-prompts.jsonl").read_text())
        spp = 2
        cfg = load_config(ppo.PPOConfig, None, [
            f"model={path}", f"data={data}", f"reward_model={rm}", f"runs_dir={tmp}/runs", "name=bench", "tensorboard=false",
            f"rollout_batch_size={max(1, args.prompts // spp)}", f"samples_per_prompt={spp}", "batch_size=4",
            f"grad_accum={max(1, (args.prompts // spp) * spp // 4)}", f"max_new_tokens={args.max_tokens}",
            "max_length=1024", f"max_steps={args.iterations}",
        ])
        s = ppo.setup(cfg, engine=engine, reward_fn=None)
        its = [ppo.iteration(s, i) for i in range(args.iterations)]
        ppo.cleanup(s)
    engine.close()
    it = its[-1]
    split = {k: it[f"train/time/{k}_s"] for k in ("rollout", "score", "update", "sync")}
    total = it["train/time/iteration_s"]

    result = {
        "host": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "model": path, "rollouts": len(prompts), "new_tokens": args.max_tokens, "vllm_dtype": args.dtype,
        "rollout": {"vllm_s": vllm_s, "transformers_s": hf_s, "speedup": hf_s / vllm_s,
                    "vllm_tokens_per_s": tokens / vllm_s, "transformers_tokens_per_s": tokens / hf_s,
                    "vllm_runs_s": t_vllm, "transformers_runs_s": t_hf},
        "weight_sync_s": sync_s,
        "ppo_iteration": {"total_s": total, **{f"{k}_s": v for k, v in split.items()},
                          "share": {k: v / total for k, v in split.items()},
                          "logprob_gap_max": it["train/rollout/logprob_gap_max"],
                          "response_tokens": it["train/response_length"] * cfg.rollouts},
    }
    print()
    print(f"model {path}; {len(prompts)} rollouts x {args.max_tokens} new tokens; vLLM {args.dtype}, transformers float32")
    print(f"{'rollout backend':<22}{'seconds':>10}{'tokens/s':>12}{'vs transformers':>18}")
    print(f"{'transformers generate':<22}{hf_s:>10.2f}{tokens / hf_s:>12.1f}{1.0:>17.2f}x")
    print(f"{'vLLM (in-process)':<22}{vllm_s:>10.2f}{tokens / vllm_s:>12.1f}{hf_s / vllm_s:>17.2f}x")
    print(f"\nweight sync (trainer -> engine): {sync_s:.2f} s")
    print(f"\none PPO iteration ({cfg.rollouts} rollouts, <= {args.max_tokens} tokens): {total:.1f} s")
    for k, v in split.items():
        print(f"  {k:<8}{v:>8.2f} s  {100 * v / total:>5.1f}%")
    print(f"  sampler vs trainer log-prob gap (max): {it['train/rollout/logprob_gap_max']:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
