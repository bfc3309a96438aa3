#!/usr/bin/env bash
# Device call 10 (H100): the issue #2 bar command with today's defaults (bf16 stream, 131,072-token
# micro-batches, 5 warm-up steps, eager evaluation), capped at 490 steps for the 20M-token corpus; then the
# 11-block/13-virtual recurrence for 25 s at the same defaults (step time vs virtual depth).
source benchmarks/device_env.sh
run() { train_run runs/gpu10 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 240 baseline_9x512_180s_490steps --set train.budget_s=180 --set train.max_steps=490
run 110 rec_11b13v_25s --set train.budget_s=25 --set train.final_val_tokens=262144 --set export.quant_bits=6 \
  --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
