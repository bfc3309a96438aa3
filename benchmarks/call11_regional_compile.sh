#!/usr/bin/env bash
# Device call 11 (H100): regional compilation (train.compile_scope=layers, one graph per virtual-layer variant
# shared by every block) against whole-model compilation, on a cold machine, side by side: compile seconds and
# ms/step for 9x512 (layers first, so the whole-model run gets the warm Muon graphs: conservative), then the
# issue #2 bar command with layers (warm cache: a search trial's overhead), then the 13-virtual recurrence.
source benchmarks/device_env.sh
python3 -c "import pyarrow, jsonschema" 2>&1 | tail -1  # what a Ray carry would still need
run() { train_run runs/gpu11 "$@"; }  # limit_s, name, trainer arguments (device_env.sh)
run 150 layers_9x512_25s_cold --set train.budget_s=25 --set train.compile_scope=layers
run 150 model_9x512_25s_cold --set train.budget_s=25 --set train.compile_scope=model
run 230 layers_9x512_180s_490steps --set train.budget_s=180 --set train.max_steps=490 --set train.compile_scope=layers
run 100 layers_rec_11b13v_25s --set train.budget_s=25 --set train.final_val_tokens=262144 --set export.quant_bits=6 \
  --set train.compile_scope=layers --set model.unique_blocks=11 --set "model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]"
grep -h -E "compile|training done|val_bpb" runs/gpu11/*.log | grep -v "^.*config" | cut -c1-220
