#!/usr/bin/env bash
# Device call 1: the challenge baseline shape for 180 s, then an 11-block/13-virtual config for 40 s.
source benchmarks/device_env.sh
run() {  # name, then trainer arguments
  local name=$1; shift
  python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|peak|Error|error" "$OUT/$name.log" | tail -6
}
run baseline_9x512_180s --set train.budget_s=180
run rec_11b13v_40s --set train.budget_s=40 --set model.unique_blocks=11 \
    --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
