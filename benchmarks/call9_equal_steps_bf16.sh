#!/usr/bin/env bash
# Device call 9 (H100): does the bf16 residual stream cost val_bpb at equal steps? bf16 stream, 131,072-token
# micro-batches, 490 steps with warmdown counted from step 490 (the schedule call 7's 180 s float32 run got
# from the clock); then the float32 stream at 131,072-token micro-batches for 180 s, evaluated this time.
source benchmarks/device_env.sh
run() { train_run runs/gpu9 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 250 bf16stream_micro131k_490steps --set train.max_steps=490 --set train.budget_s=600 \
  --set train.micro_batch_tokens=131072 --set train.residual_dtype=bfloat16 --set export.quant_bits=8
run 340 baseline_micro131k_180s --set train.residual_dtype=float32 --set train.budget_s=180 --set train.micro_batch_tokens=131072 --set export.quant_bits=8
