#!/usr/bin/env bash
# Device call 4 (H100), after the graph-break fix: baseline shape 180 s (issue 2 bar) with its artifact,
# then 25 s runs side by side: the baseline, the 11-block/13-virtual recurrence, cuDNN attention.
source benchmarks/device_env.sh
mkdir -p runs/gpu4 "$OUT/runs"
run() {  # seconds limit, name, then trainer arguments
  local limit=$1 name=$2; shift 2
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "runs/gpu4/$name" "$@" \
    > "runs/gpu4/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|Error|error" "runs/gpu4/$name.log" | tail -4
  mkdir -p "$OUT/runs/$name"; cp "runs/gpu4/$name.log" "$OUT/runs/"; cp runs/gpu4/$name/{metrics.json,train.log} "$OUT/runs/$name/" 2>/dev/null
}
run 330 baseline_9x512_180s --set train.budget_s=180 --set export.quant_bits=8
cp runs/gpu4/baseline_9x512_180s/model.ptz "$OUT/baseline_9x512_180s.ptz" 2>/dev/null
short="--set train.budget_s=25 --set train.final_val_tokens=524288 --set export.quant_bits=6"
run 100 base_sdpa_25s $short --set train.attention=sdpa
run 110 rec_11b13v_25s $short --set train.attention=sdpa --set model.unique_blocks=11 \
    --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
run 100 base_cudnn_25s $short --set train.attention=sdpa_cudnn
