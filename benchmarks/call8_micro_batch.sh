#!/usr/bin/env bash
# Device call 8 (H100): float32 residual stream with 131,072-token micro-batches (4 per step), 180 s budget
# (issue 2 bar); then the bf16 residual stream at the same micro-batch, 25 s (throughput, issue 6).
source benchmarks/device_env.sh
run() { train_run runs/gpu8 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 310 baseline_micro131k_180s --set train.residual_dtype=float32 --set train.budget_s=180 --set train.micro_batch_tokens=131072 --set export.quant_bits=8
run 130 base_bf16stream_micro131k_25s --set train.budget_s=25 --set train.final_val_tokens=262144 \
  --set train.micro_batch_tokens=131072 --set train.residual_dtype=bfloat16 --set export.quant_bits=6
