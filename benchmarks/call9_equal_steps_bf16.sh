#!/usr/bin/env bash
# Device call 9 (H100): does the bf16 residual stream cost val_bpb at equal steps? bf16 stream, 131,072-token
# micro-batches, 490 steps with warmdown counted from step 490 (the schedule call 7's 180 s float32 run got
# from the clock); then the float32 stream at 131,072-token micro-batches for 180 s, evaluated this time.
source benchmarks/device_env.sh
mkdir -p runs/gpu9 "$OUT/runs"
run() {  # seconds limit, name, then trainer arguments
  local limit=$1 name=$2; shift 2
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu9/$name" "$@" \
    > "runs/gpu9/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|Error" "runs/gpu9/$name.log" | tail -4
  cp "runs/gpu9/$name.log" "$OUT/runs/"
}
run 250 bf16stream_micro131k_490steps --set train.max_steps=490 --set train.budget_s=600 \
  --set train.micro_batch_tokens=131072 --set train.residual_dtype=bfloat16 --set export.quant_bits=8
run 340 baseline_micro131k_180s --set train.budget_s=180 --set train.micro_batch_tokens=131072 --set export.quant_bits=8
