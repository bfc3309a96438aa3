#!/usr/bin/env bash
# Device call 4 (H100), after the graph-break fix: baseline shape 180 s (issue 2 bar) with its artifact,
# then 25 s runs side by side: the baseline, the 11-block/13-virtual recurrence, cuDNN attention.
source benchmarks/device_env.sh
# Settings of that day, pinned now that the defaults moved: bf16 stream, 65,536-token micro-batches.
then="--set train.residual_dtype=bfloat16 --set train.micro_batch_tokens=65536"
run() { train_run runs/gpu4 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 330 baseline_9x512_180s $then --set train.budget_s=180 --set export.quant_bits=8
short="$then --set train.budget_s=25 --set train.final_val_tokens=524288 --set export.quant_bits=6"
run 100 base_sdpa_25s $short --set train.attention=sdpa
run 110 rec_11b13v_25s $short --set train.attention=sdpa --set model.unique_blocks=11 \
    --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
run 100 base_cudnn_25s $short --set train.attention=sdpa_cudnn
