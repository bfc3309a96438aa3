#!/usr/bin/env bash
# Device call 7 (H100): float32 residual stream with explicit bf16 blocks (no autocast; call 6's autocast
# version ran 366.6 ms/step). Baseline 180 s (issue 2 bar), then 25 s side by side: baseline vs the
# 11-block/13-virtual recurrence (step time vs virtual depth).
source benchmarks/device_env.sh
mkdir -p runs/gpu7 "$OUT/runs"
run() {  # seconds limit, name, then trainer arguments
  local limit=$1 name=$2; shift 2
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu7/$name" "$@" \
    > "runs/gpu7/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|Error" "runs/gpu7/$name.log" | tail -4
  cp "runs/gpu7/$name.log" "$OUT/runs/"; cp "runs/gpu7/$name/model.ptz" "$OUT/$name.ptz" 2>/dev/null
}
run 300 baseline_9x512_180s --set train.budget_s=180 --set export.quant_bits=8
short="--set train.budget_s=25 --set train.final_val_tokens=262144 --set export.quant_bits=6"
run 130 base_25s $short
run 150 rec_11b13v_25s $short --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
