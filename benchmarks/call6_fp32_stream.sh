#!/usr/bin/env bash
# Device call 6 (H100), after moving the residual stream to float32 (bf16 only in matmuls/attention, as
# under the challenge's autocast): the baseline shape with a 180 s budget (issue 2 bar), then for the
# reference's 516 steps with its LR schedule (equal-steps comparison, issue 6 item 1).
source benchmarks/device_env.sh
mkdir -p runs/gpu6 "$OUT/runs"
run() {  # seconds limit, name, then trainer arguments
  local limit=$1 name=$2; shift 2
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu6/$name" "$@" \
    > "runs/gpu6/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|Error" "runs/gpu6/$name.log" | tail -4
  cp "runs/gpu6/$name.log" "$OUT/runs/"; cp "runs/gpu6/$name/model.ptz" "$OUT/$name.ptz" 2>/dev/null
}
run 300 baseline_9x512_180s --set train.budget_s=180 --set export.quant_bits=8
run 280 baseline_9x512_516steps --set train.max_steps=516 --set train.budget_s=600 --set export.quant_bits=8
