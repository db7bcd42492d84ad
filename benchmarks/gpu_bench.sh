#!/usr/bin/env bash
# One GPU run of the trainer benchmark (issue: trainers vs TRL on a GPU, with MFU), sized to
# fit a single 10-minute device command. Run from the repository root on a CUDA host:
#
#   bash benchmarks/gpu_bench.sh [OUT_DIR]
#
# It needs torch, transformers and peft (usually there) plus trl, datasets and their own
# needs (pyarrow, ...); on a host without network access, install them from carried wheels
# first, and point RLAIF_BENCH_TOKENIZER at a carried copy of the default model's tokenizer
# files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) when
# ~/.cache/rlaif/models/smollm2-135m-instruct is not prepared there.
set -euo pipefail
out=${1:-${OUT:-runs/gpu-bench}}
mkdir -p "$out"
tok=${RLAIF_BENCH_TOKENIZER:-default}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# 0.55B, sequence length 1024, 8 pairs per step: the reference point (TRL on an H200:
# DPO 99.9k tokens/s with precomputed reference log-probs, reward model 106.7k tokens/s).
python benchmarks/bench_train.py --model llama-0.5b --tokenizer "$tok" --trainers dpo,rm \
    --pairs 96 --batch-size 8 --seq-len 1024 --precision bf16 2>&1 | tee "$out/bench-0.5b.txt"
