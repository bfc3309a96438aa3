#!/usr/bin/env bash
# Device call 5 (H100): the baseline shape for exactly the reference's 516 steps with the reference's LR
# schedule (warmdown 1200 steps counted from step 516, i.e. what its 349 ms/step gave it in 180 s), so
# val_bpb and artifact bytes compare with the reference at equal steps (issue 2, issue 6 item 1).
source benchmarks/device_env.sh
train_run runs/gpu5 420 baseline_9x512_516steps --set train.max_steps=516 --set train.budget_s=600 \
  --set train.residual_dtype=bfloat16 --set train.micro_batch_tokens=65536 --set export.quant_bits=8
