#!/usr/bin/env bash
# Recipe parity: our trainer on the recurrence record's configuration against the record's own train_gpt.py
# (openai/parameter-golf records/track_10min_16mb/2026-03-31_ParallelResiduals_MiniDepthRecurrence), side by side on
# this machine's GPU, same data, same seeds, same steps and tokens (the step count binds, not the clock, so the two
# learning-rate schedules match step for step).
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> REFERENCE=<record train_gpt.py> \
#        bash benchmarks/recipe_parity.sh
#
# Optional settings (environment variables):
#   CONFIG        our run config (default benchmarks/configs/record_parity_1gpu.yaml: 654 steps of 131,072 tokens)
#   SEEDS         seeds, space-separated, each run by both trainers (default "1341 1342")
#   STEPS         training steps of every run (default 654; overrides the config's train.max_steps)
#   WHICH         ours, reference or "ours reference" (default both)
#   REFERENCE_EXPORT  1: let the record script finish its GPTQ + brotli export and round trip; 0 (default): stop it
#                 after its post-EMA evaluation (the export takes minutes of CPU on one GPU's host)
#   SETS          more --set overrides for our runs, space-separated
#   SMOKE=1       our runs only, on the CPU with `trainer train --smoke` (checks the script, not the figures)
#
# The record script's settings are its published command scaled to STEPS as the anchor measurement did: recurrence
# from step 480 of 654 (73%), warmdown over the last 560 steps, Muon momentum warm-up over 240 steps, 131,072 tokens a
# step at sequence length 2048, GPTQ calibrated on training data, no sliding-window evaluation.
# Writes to $OUT/recipe_parity_<gpu>_<date>/: ours_s<seed>/ (metrics.json, train.log), reference_s<seed>.log, and
# recipe_parity.md, the side-by-side table. Exit 1 if a run failed, 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init recipe_parity "$@"

CONFIG=${CONFIG:-benchmarks/configs/record_parity_1gpu.yaml}
SEEDS=${SEEDS:-1341 1342}
STEPS=${STEPS:-654}
WHICH=${WHICH:-ours reference}
REFERENCE_EXPORT=${REFERENCE_EXPORT:-0}
require_int STEPS steps
[ -f "$CONFIG" ] || bench_fail "CONFIG=$CONFIG is not a file: name a run config (default benchmarks/configs/record_parity_1gpu.yaml)"
for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || bench_fail "SEEDS has '$seed': give whole numbers, space-separated"; done
for which in $WHICH; do
  case $which in ours|reference) ;; *) bench_fail "WHICH has '$which': use ours, reference or \"ours reference\"" ;; esac
done
case $REFERENCE_EXPORT in 0|1) ;; *) bench_fail "REFERENCE_EXPORT=$REFERENCE_EXPORT: use 1 (full export) or 0" ;; esac
if [[ " $WHICH " == *" reference "* && "${SMOKE:-0}" != 1 ]]; then
  [ -n "${REFERENCE:-}" ] && [ -f "$REFERENCE" ] \
    || bench_fail "REFERENCE is not set to a file: name the record's train_gpt.py (or WHICH=ours)"
  REFERENCE=$(cd "$(dirname "$REFERENCE")" && pwd)/$(basename "$REFERENCE")
fi

bench_start

ours=(--config "$CONFIG" --set "train.max_steps=$STEPS")
set_args "${SETS:-}" ours
[ "${SMOKE:-0}" = 1 ] && ours+=(--smoke --device cpu)

# The record's published command, scaled to STEPS (see the header).
reference_env() {
  echo BIGRAM_DIM=112 MIXED_QUANT=1 N_INT6_LAYERS=32 NUM_LAYERS=11 RECUR_LAYERS=4,5 \
    RECUR_START_STEP=$((STEPS * 480 / 654)) REPEAT_UNTIE_MLP=full REPEAT_UNTIE_MLP_LAYERS=4,5 DISABLE_LAYER0_ATTN=1 \
    PARALLEL_RESIDUAL=1 PARALLEL_START_LAYER=7 MAX_WALLCLOCK_SECONDS=0 ITERATIONS=$STEPS TRAIN_BATCH_TOKENS=131072 \
    WARMDOWN_ITERS=$((STEPS * 560 / 654)) MUON_MOMENTUM_WARMUP_STEPS=$((STEPS * 240 / 654)) GPTQ_AR_SELFGEN=0 \
    EVAL_STRIDE=0 VAL_LOSS_EVERY=0 TRAIN_LOG_EVERY=50
}

failed=0
rows=()
for seed in $SEEDS; do
  if [[ " $WHICH " == *" ours "* ]]; then
    progress "ours, seed $seed: $CONFIG, $STEPS steps"
    bench_train "our run, seed $seed" "$RESULT/ours_s$seed" "$RESULT/ours_s$seed.log" "${ours[@]}" \
      --set "train.seed=$seed"
    rows+=(--run "$RESULT/ours_s$seed")
  fi
  if [[ " $WHICH " == *" reference "* && "${SMOKE:-0}" != 1 ]]; then
    progress "reference, seed $seed: $STEPS steps"
    log=$RESULT/reference_s$seed.log
    mkdir -p "$RESULT/reference_s$seed"
    # The record script reads its settings from the environment and writes logs/ and its artifacts to the working dir.
    (cd "$RESULT/reference_s$seed" && env $(reference_env) SEED=$seed DATA_PATH=$DATA TOKENIZER_PATH=$TOKENIZER \
      RUN_ID=reference_s$seed torchrun --standalone --nproc_per_node=1 "$REFERENCE") > "$log" 2>&1 &
    pid=$!
    if [ "$REFERENCE_EXPORT" = 0 ]; then  # stop it once its post-EMA evaluation is logged
      while kill -0 $pid 2> /dev/null && ! grep -q "DIAGNOSTIC post_ema" "$log"; do sleep 2; done
      pkill -TERM -P $pid 2> /dev/null; kill $pid 2> /dev/null; wait $pid 2> /dev/null
      grep -q "DIAGNOSTIC post_ema" "$log" || { failed=1; echo "$SCRIPT: the reference run, seed $seed, failed (log: $log)" >&2; }
    else
      wait $pid || { failed=1; echo "$SCRIPT: the reference run, seed $seed, failed (log: $log)" >&2; }
    fi
    rows+=(--reference "$log")
  fi
done

python benchmarks/tables.py parity "${rows[@]}" > "$RESULT/recipe_parity.md"
cat "$RESULT/recipe_parity.md"
progress "done: $RESULT/recipe_parity.md"
exit $failed
