#!/usr/bin/env bash
# Size-model calibration runs: 12 shapes, each trained briefly on real text and exported for real.
# Usage: bash benchmarks/calibration_runs.sh cpu|gpu OUT_DIR [DATA_DIR] [TOKENIZER]
#   cpu: 20 steps of 1,024 tokens (what a 2-core machine can do; weights stay close to their init)
#   gpu: 15 s of 65,536-token steps, eager (a few hundred Muon steps, like a short search trial)
set -u
mode=${1:?usage: calibration_runs.sh cpu|gpu OUT_DIR [DATA_DIR] [TOKENIZER]}
out=${2:?usage: calibration_runs.sh cpu|gpu OUT_DIR [DATA_DIR] [TOKENIZER]}
data=${3:-../shared/data/textmix_sp1024}
tok=${4:-../shared/data/tokenizers/fineweb_1024_bpe.model}
if [ "$mode" = cpu ]; then
  brief=(--set train.seq_len=128 --set train.batch_tokens=1024 --set train.micro_batch_tokens=1024
         --set train.max_steps=20 --set train.warmdown_steps=5 --set train.compile=false
         --set train.compile_warmup_steps=0 --set train.final_val_tokens=2049 --set train.val_prefix_tokens=1024
         --set train.val_batch_tokens=2048 --set train.log_every_steps=10 --device cpu)
else
  brief=(--set train.batch_tokens=65536 --set train.micro_batch_tokens=65536 --set train.budget_s=12
         --set train.warmdown_steps=300 --set train.compile=false --set train.compile_warmup_steps=0
         --set train.final_val_tokens=262145 --set train.log_every_steps=100)
fi
run() {  # name, then model/export overrides
  local name=$1; shift
  [ -f "$out/$name/metrics.json" ] && { echo "skip $name"; return; }
  python3 -m trainer train --data "$data" --tokenizer "$tok" --out "$out/$name" "${brief[@]}" "$@" > "$out/$name.log" 2>&1
  echo "$name rc=$? $(grep -o 'artifact_bytes [0-9,]*' "$out/$name.log" | tail -1)"
}
mkdir -p "$out"
run base9x512_int8
run base9x512_int6 --set export.quant_bits=6
run loop11b13v_int8 --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
run shared3x4_w832_int8 --set model.unique_blocks=3 --set "model.virtual_layers=[0,1,2,0,1,2,0,1,2,0,1,2]" \
    --set model.model_dim=832 --set model.num_heads=13 --set model.num_kv_heads=1 --set model.depth_signal=learned
run u6v14_sin_int8 --set model.unique_blocks=6 --set "model.virtual_layers=[0,1,2,3,4,5,0,1,2,3,4,5,0,1]" \
    --set model.depth_signal=sinusoidal
run tie11b15v_int6 --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,6,7,8,9,9,9,9,9,10]" \
    --set export.quant_bits=6
run cycle3x3_int8 --set model.unique_blocks=3 --set "model.virtual_layers=[0,1,2,0,1,2,0,1,2]"
run untie_loop45_int8 --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]" \
    --set model.untie_mlp=full --set export.quant_bits=6
run w768_5b_mlp3_int6 --set model.unique_blocks=5 --set model.model_dim=768 --set model.num_heads=12 \
    --set model.num_kv_heads=4 --set model.mlp_mult=3 --set export.quant_bits=6
run w640_4b_leaky_int5 --set model.unique_blocks=4 --set model.model_dim=640 --set model.num_heads=10 \
    --set model.num_kv_heads=5 --set model.activation=leaky_relu2 --set export.quant_bits=5
run w384_8b_int8 --set model.unique_blocks=8 --set model.model_dim=384 --set model.num_heads=6 --set model.num_kv_heads=2
run w1024_2b_int6 --set model.unique_blocks=2 --set "model.virtual_layers=[0,1,0,1,0,1]" --set model.model_dim=1024 \
    --set model.num_heads=16 --set model.num_kv_heads=4 --set export.quant_bits=6
