#!/usr/bin/env bash
# Step time: our trainer's ms/step, tokens/s, MFU and compile seconds for some run configs, one run after the
# other on this machine's GPU, optionally beside the challenge's own trainer. Also answers "compile time and
# scope" (SCOPES) and "chip differences" (run it on each chip with the same CONFIGS).
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/step_time.sh
#
# Optional settings (environment variables):
#   CONFIGS    run configs to time, space-separated; `defaults` is the trainer's defaults (the challenge's baseline
#              shape at int8). Default: "defaults spaces/presets/loop45_11x512.yaml"
#   BUDGET_S   training seconds per run (default 180)
#   MAX_STEPS  stop each run after this many steps (default: none). On a small corpus a cap keeps a fast run from
#              repeating the train set more often than a slow one
#   SCOPES     compile scopes to run each config under: model, layers, or "model layers" (default model)
#   SETS       more --set overrides for every run, space-separated, e.g. "train.batch_tokens=131072"
#   REFERENCE  path to the challenge's train_gpt.py: also run it for BUDGET_S on one GPU (torchrun)
#   SMOKE=1    the same runs on the CPU with `trainer train --smoke` (seconds each; checks the script, not speed)
#
# Writes to $OUT/step_time_<gpu>_<date>/: one folder per run (metrics.json, train.log, model.ptz), reference/
# (its log), and step_time.md, the table. Exit 1 if a run failed (the table names its log), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init step_time "$@"

CONFIGS=${CONFIGS:-defaults spaces/presets/loop45_11x512.yaml}
BUDGET_S=${BUDGET_S:-180}
SCOPES=${SCOPES:-model}
require_seconds BUDGET_S
[ -z "${MAX_STEPS:-}" ] || require_int MAX_STEPS steps
for config in $CONFIGS; do
  [ "$config" = defaults ] || [ -f "$config" ] || bench_fail "CONFIGS names $config, which is not a file: give run config paths (or defaults)"
done
for scope in $SCOPES; do
  case $scope in model|layers) ;; *) bench_fail "SCOPES has '$scope': use model, layers or \"model layers\"" ;; esac
done
if [ -n "${REFERENCE:-}" ]; then
  [ -f "$REFERENCE" ] || bench_fail "REFERENCE=$REFERENCE is not a file: name the challenge's train_gpt.py"
  REFERENCE=$(cd "$(dirname "$REFERENCE")" && pwd)/$(basename "$REFERENCE")
fi

bench_start

common=(--set "train.budget_s=$BUDGET_S")
[ -z "${MAX_STEPS:-}" ] || common+=(--set "train.max_steps=$MAX_STEPS")
set_args "${SETS:-}" common
[ "${SMOKE:-0}" = 1 ] && common+=(--smoke --device cpu)

failed=0
runs=()
total=$(( $(wc -w <<< "$CONFIGS") * $(wc -w <<< "$SCOPES") ))
done_runs=0
for config in $CONFIGS; do
  for scope in $SCOPES; do
    name=$(basename "$config" .yaml)
    [ "$config" = defaults ] && name=trainer_defaults
    [ "$(wc -w <<< "$SCOPES")" -gt 1 ] && name=${name}_$scope
    run_dir=$RESULT/$name
    args=("${common[@]}" --set "train.compile_scope=$scope")
    [ "$config" = defaults ] || args=(--config "$config" "${args[@]}")
    done_runs=$((done_runs + 1))
    progress "run $done_runs/$total: $name ($BUDGET_S s of training, compile scope $scope)"
    bench_train "run $name" "$run_dir" "$RESULT/$name.log" "${args[@]}"
    runs+=("$run_dir")
  done
done

reference_log=
if [ -n "${REFERENCE:-}" ]; then
  if [ "${SMOKE:-0}" = 1 ]; then
    progress "reference skipped: the challenge's trainer needs a GPU"
  else
    progress "reference: $REFERENCE for $BUDGET_S s on one GPU"
    mkdir -p "$RESULT/reference"
    reference_log=$RESULT/reference/reference.log
    # The reference reads its settings from the environment and writes logs/ and its artifacts to the working dir.
    (cd "$RESULT/reference" && DATA_PATH=$DATA TOKENIZER_PATH=$TOKENIZER MAX_WALLCLOCK_SECONDS=$BUDGET_S RUN_ID=reference \
      torchrun --standalone --nproc_per_node=1 "$REFERENCE") > "$reference_log" 2>&1 \
      || { failed=1; echo "$SCRIPT: the reference run failed (log: $reference_log)" >&2; }
  fi
fi

table_args=(runs "${runs[@]}")
[ -z "$reference_log" ] || table_args+=(--reference "$reference_log")
python benchmarks/tables.py "${table_args[@]}" > "$RESULT/step_time.md"
cat "$RESULT/step_time.md"
progress "done: $RESULT/step_time.md"
exit $failed
