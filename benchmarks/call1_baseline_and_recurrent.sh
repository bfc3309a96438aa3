#!/usr/bin/env bash
# Device call 1 (H100): baseline shape 180 s (issue 2 bar), 11-block/13-virtual 30 s (step time vs depth),
# baseline with 131,072-token micro-batches 30 s (throughput variant). Runs stay in runs/gpu for call 2.
source benchmarks/device_env.sh
run() {  # seconds limit, name, then trainer arguments
  local limit=$1 name=$2; shift 2
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu/$name" "$@" \
    > "runs/gpu/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "unique_params|training done|val_bpb|Error" "runs/gpu/$name.log" | tail -5
}
mkdir -p runs/gpu
run 330 baseline_9x512_180s --set train.budget_s=180 --set export.quant_bits=8
run 120 rec_11b13v_30s --set train.budget_s=30 --set model.unique_blocks=11 \
    --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]" --set export.quant_bits=6
run 110 baseline_micro131k_30s --set train.budget_s=30 --set train.micro_batch_tokens=131072
tar czf "$OUT/call1.tgz" runs/gpu/*.log runs/gpu/*/metrics.json runs/gpu/*/train.log
