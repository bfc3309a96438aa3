#!/usr/bin/env bash
# Device call 7 (H100): float32 residual stream with explicit bf16 blocks (no autocast; call 6's autocast
# version ran 366.6 ms/step). Baseline 180 s (issue 2 bar), then 25 s side by side: baseline vs the
# 11-block/13-virtual recurrence (step time vs virtual depth).
source benchmarks/device_env.sh
# Settings of that day, pinned now that the defaults moved: float32 stream, 65,536-token micro-batches.
then="--set train.residual_dtype=float32 --set train.micro_batch_tokens=65536"
run() { train_run runs/gpu7 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 300 baseline_9x512_180s $then --set train.budget_s=180 --set export.quant_bits=8
short="$then --set train.budget_s=25 --set train.final_val_tokens=262144 --set export.quant_bits=6"
run 130 base_25s $short
run 150 rec_11b13v_25s $short --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
