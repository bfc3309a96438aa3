#!/usr/bin/env bash
# Size calibration: does the size model's margin cover real artifacts? Trains the calibration shapes briefly
# (widths 384-1024, int5/int6/int8, 3-15 virtual layers, shared, looped, tied-tail and untied blocks, MLP x2 and x3),
# exports each for real, then compares the shipped size model's predictions with the measured bytes
# (`python -m spaces accuracy`) and refits it on these runs (`python -m spaces calibrate`, written beside the
# results; the shipped calibration is left as it is).
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/size_calibration.sh
#
# Optional settings (environment variables):
#   BUDGET_S    training seconds per shape (default 12: eager, 65,536-token steps, as the shipped fit's short runs).
#               Training length moves the size by up to ~2%: calibrate at the budget you will search at
#   SHAPES      which shapes, space-separated (default all 12; names as in this script)
#   EXTRA_RUNS  more run folders (with metrics.json) to fit with, e.g. the repository's:
#               "benchmarks/results/size_calibration_h100_2026-11-25/runs_normal_init/*/"
#   SMOKE=1     two shapes for 20 CPU steps of 1,024 tokens, at most 20 s (weights stay near their init), fitted with
#               the repository's 12 s to 1,725-step runs; checks the script, not the model
#
# Writes to $OUT/size_calibration_<gpu>_<date>/: runs/<shape>/ (metrics.json, model.ptz, train.log),
# accuracy_shipped.md (the shipped model on these runs), size_calibration.json and accuracy_refit.md (the refit).
# Exit 1 if a run or the fit failed (logs are named), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init size_calibration "$@"

BUDGET_S=${BUDGET_S:-12}
require_seconds BUDGET_S
ALL_SHAPES="base9x512_int8 base9x512_int6 loop11b13v_int8 shared3x4_w832_int8 u6v14_sin_int8 tie11b15v_int6
cycle3x3_int8 untie_loop45_int8 w768_5b_mlp3_int6 w640_4b_leaky_int5 w384_8b_int8 w1024_2b_int6"
if [ "${SMOKE:-0}" = 1 ]; then
  SHAPES=${SHAPES:-cycle3x3_int8 w640_4b_leaky_int5}
  EXTRA_RUNS=${EXTRA_RUNS:-benchmarks/results/size_calibration_h100_2026-11-25/runs_normal_init/*/}
  brief=(--set train.seq_len=128 --set train.batch_tokens=1024 --set train.micro_batch_tokens=1024
         --set train.max_steps=20 --set train.budget_s=20 --set train.warmdown_steps=5 --set train.compile=false
         --set train.compile_warmup_steps=0 --set train.final_val_tokens=2049 --set train.val_prefix_tokens=1024
         --set train.val_batch_tokens=2048 --set train.log_every_steps=10 --set export.zstd_level=1 --device cpu)
else
  SHAPES=${SHAPES:-$ALL_SHAPES}
  brief=(--set train.batch_tokens=65536 --set train.micro_batch_tokens=65536 --set "train.budget_s=$BUDGET_S"
         --set train.warmdown_steps=300 --set train.compile=false --set train.compile_warmup_steps=0
         --set train.final_val_tokens=262145 --set train.log_every_steps=100)
fi

# The model and export settings of each shape.
shape_args() {
  case $1 in
    base9x512_int8) ;;
    base9x512_int6) echo "export.quant_bits=6" ;;
    loop11b13v_int8) echo "model.unique_blocks=11 model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10]" ;;
    shared3x4_w832_int8) echo "model.unique_blocks=3 model.virtual_layers=[0,1,2,0,1,2,0,1,2,0,1,2] model.model_dim=832
      model.num_heads=13 model.num_kv_heads=1 model.depth_signal=learned" ;;
    u6v14_sin_int8) echo "model.unique_blocks=6 model.virtual_layers=[0,1,2,3,4,5,0,1,2,3,4,5,0,1]
      model.depth_signal=sinusoidal" ;;
    tie11b15v_int6) echo "model.unique_blocks=11 model.virtual_layers=[0,1,2,3,4,5,6,7,8,9,9,9,9,9,10] export.quant_bits=6" ;;
    cycle3x3_int8) echo "model.unique_blocks=3 model.virtual_layers=[0,1,2,0,1,2,0,1,2]" ;;
    untie_loop45_int8) echo "model.unique_blocks=11 model.virtual_layers=[0,1,2,3,4,5,4,5,6,7,8,9,10] model.untie_mlp=full
      export.quant_bits=6" ;;
    w768_5b_mlp3_int6) echo "model.unique_blocks=5 model.model_dim=768 model.num_heads=12 model.num_kv_heads=4 model.mlp_mult=3
      export.quant_bits=6" ;;
    w640_4b_leaky_int5) echo "model.unique_blocks=4 model.model_dim=640 model.num_heads=10 model.num_kv_heads=5
      model.activation=leaky_relu2 export.quant_bits=5" ;;
    w384_8b_int8) echo "model.unique_blocks=8 model.model_dim=384 model.num_heads=6 model.num_kv_heads=2" ;;
    w1024_2b_int6) echo "model.unique_blocks=2 model.virtual_layers=[0,1,0,1,0,1] model.model_dim=1024 model.num_heads=16
      model.num_kv_heads=4 export.quant_bits=6" ;;
    *) return 1 ;;
  esac
}
for shape in $SHAPES; do
  shape_args "$shape" > /dev/null || bench_fail "SHAPES has '$shape', which is not a calibration shape: use some of $(echo $ALL_SHAPES)"
done

bench_start

failed=0
run_dirs=()
total=$(wc -w <<< "$SHAPES")
i=0
for shape in $SHAPES; do
  i=$((i + 1))
  run_dir=$RESULT/runs/$shape
  mkdir -p "$RESULT/runs"
  if [ -f "$run_dir/metrics.json" ]; then
    progress "shape $i/$total: $shape already trained, kept"
  else
    progress "shape $i/$total: $shape"
    args=("${brief[@]}")
    set_args "$(shape_args "$shape")" args
    SHOW="artifact_bytes [0-9,]*" bench_train "$shape" "$run_dir" "$RESULT/runs/$shape.log" "${args[@]}" || continue
  fi
  run_dirs+=("$run_dir")
done
[ ${#run_dirs[@]} -gt 0 ] || { echo "$SCRIPT: no run finished; see the logs under $RESULT/runs" >&2; exit 1; }

progress "the shipped size model on these runs: $RESULT/accuracy_shipped.md"
python -m spaces accuracy "${run_dirs[@]}" > "$RESULT/accuracy_shipped.md" 2>&1 || failed=1
tail -n 1 "$RESULT/accuracy_shipped.md"
# shellcheck disable=SC2086  # EXTRA_RUNS is a list of folders (globs allowed)
extra=(${EXTRA_RUNS:-})
progress "refit on ${#run_dirs[@]} runs + ${#extra[@]} more: $RESULT/size_calibration.json"
if python -m spaces calibrate "${run_dirs[@]}" "${extra[@]}" --out "$RESULT/size_calibration.json" \
    > "$RESULT/accuracy_refit.md" 2>&1; then
  grep -E "safety margin|wrote" "$RESULT/accuracy_refit.md" | tail -n 2
else
  failed=1
  echo "$SCRIPT: the refit failed: $(tail -n 1 "$RESULT/accuracy_refit.md")" >&2
fi
progress "done: $RESULT"
exit $failed
