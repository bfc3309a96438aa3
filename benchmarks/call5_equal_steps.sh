#!/usr/bin/env bash
# Device call 5 (H100): the baseline shape for exactly the reference's 516 steps with the reference's LR
# schedule (warmdown 1200 steps counted from step 516, i.e. what its 349 ms/step gave it in 180 s), so
# val_bpb and artifact bytes compare with the reference at equal steps (issue 2, issue 6 item 1).
source benchmarks/device_env.sh
mkdir -p runs/gpu5 "$OUT/runs"
name=baseline_9x512_516steps
timeout 420 python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu5/$name" \
  --set train.max_steps=516 --set train.budget_s=600 --set export.quant_bits=8 > "runs/gpu5/$name.log" 2>&1
echo "== $name rc=$?"; grep -E "training done|val_bpb|Error" "runs/gpu5/$name.log" | tail -4
cp "runs/gpu5/$name.log" "$OUT/runs/"; cp "runs/gpu5/$name/model.ptz" "$OUT/$name.ptz"
