#!/usr/bin/env bash
# Device call 20 (one H100, 2026-11-24 fourth session), after call 19:
# (a) does a longer regime move the Gaussian-initialised artifacts? Four of call 19's shapes trained 45 s at full
#     learning rate (warmdown 100 steps) instead of 12 s under a 300-step warmdown;
# (b) does the init change training? The baseline shape at int6, 800 compiled steps of 131,072 tokens, uniform
#     vs normal init, same seed (equal steps, side by side).
source benchmarks/device_env.sh
L="--set train.batch_tokens=65536 --set train.micro_batch_tokens=65536 --set train.budget_s=45
   --set train.warmdown_steps=100 --set train.compile=false --set train.compile_warmup_steps=0
   --set train.final_val_tokens=262145 --set train.log_every_steps=100"
train_run /tmp/c20 90 long_base9x512_int6 $L --set export.quant_bits=6
train_run /tmp/c20 90 long_shared3x4_w832_int8 $L --set model.unique_blocks=3 \
  --set "model.virtual_layers=[0,1,2,0,1,2,0,1,2,0,1,2]" --set model.model_dim=832 --set model.num_heads=13 \
  --set model.num_kv_heads=1 --set model.depth_signal=learned
train_run /tmp/c20 90 long_w640_4b_leaky_int5 $L --set model.unique_blocks=4 --set model.model_dim=640 \
  --set model.num_heads=10 --set model.num_kv_heads=5 --set model.activation=leaky_relu2 --set export.quant_bits=5
train_run /tmp/c20 90 long_w768_5b_mlp3_int6 $L --set model.unique_blocks=5 --set model.model_dim=768 \
  --set model.num_heads=12 --set model.num_kv_heads=4 --set model.mlp_mult=3 --set export.quant_bits=6
E="--config spaces/presets/baseline.yaml --set train.batch_tokens=131072 --set train.max_steps=800
   --set train.warmdown_steps=250 --set train.budget_s=600 --set export.quant_bits=6"
train_run /tmp/c20 170 eq_base_uniform $E --set model.weight_init=uniform
train_run /tmp/c20 120 eq_base_normal $E --set model.weight_init=normal
for n in eq_base_uniform eq_base_normal; do grep -E "^step (200|400|600|800) " /tmp/c20/$n.log; done
python3 benchmarks/code_bits.py /tmp/c20/*/model.ptz > "$OUT/code_bits.txt" 2>&1; cat "$OUT/code_bits.txt"
rm -f $OUT/*.ptz
tar czf "$OUT/call20.tgz" -C /tmp/c20 $(cd /tmp/c20 && ls *.log */metrics.json)
