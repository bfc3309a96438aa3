#!/usr/bin/env bash
# DDP: one config on one GPU and on several GPUs of this machine (torchrun), side by side: ms/step, tokens/s and
# how close the step time comes to 1/N. Each run trains the same global batch, so it is also the step time a
# `search rerun --gpus N` run or a DDP search trial (`--gpus-per-trial N`) gets.
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/ddp_scaling.sh
#
# Optional settings (environment variables):
#   CONFIG    the run config (default spaces/presets/baseline.yaml)
#   BUDGET_S  training seconds per run (default 60)
#   GPU_COUNTS  GPU counts to run, space-separated (default "1 N", N = every GPU nvidia-smi lists)
#   SETS      more --set overrides for every run, space-separated
#   SMOKE=1   `trainer train --smoke` on the CPU with 1 and 2 gloo processes (seconds; checks the script)
#
# Writes to $OUT/ddp_<gpu>_<date>/: one run folder per GPU count (gpus1/, gpus2/, ...) and ddp.md, the table
# (the GPUs column is the DDP world size). Exit 1 if a run failed (logs are named), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init ddp "$@"

CONFIG=${CONFIG:-spaces/presets/baseline.yaml}
BUDGET_S=${BUDGET_S:-60}
[ -f "$CONFIG" ] || bench_fail "CONFIG=$CONFIG is not a file: name a run config YAML (e.g. spaces/presets/baseline.yaml)"
require_seconds BUDGET_S
available=$(gpu_count)
if [ "${SMOKE:-0}" = 1 ]; then
  GPU_COUNTS=${GPU_COUNTS:-1 2}
else
  [ "$available" -ge 2 ] || bench_fail "nvidia-smi lists $available GPU(s): DDP needs at least 2 (SMOKE=1 runs it on the CPU)"
  GPU_COUNTS=${GPU_COUNTS:-1 $available}
fi
for n in $GPU_COUNTS; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || bench_fail "GPU_COUNTS has '$n': give whole numbers of GPUs, e.g. \"1 2\""
  [ "${SMOKE:-0}" = 1 ] || [ "$n" -le "$available" ] || bench_fail "GPU_COUNTS has $n, but nvidia-smi lists $available GPUs"
done

bench_start

args=(--config "$CONFIG" --set "train.budget_s=$BUDGET_S")
set_args "${SETS:-}" args
[ "${SMOKE:-0}" = 1 ] && args+=(--smoke --device cpu)

failed=0
runs=()
for n in $GPU_COUNTS; do
  run_dir=$RESULT/gpus$n
  progress "$(basename "$CONFIG" .yaml) on $n $([ "${SMOKE:-0}" = 1 ] && echo CPU process || echo GPU)(s), $BUDGET_S s"
  if torchrun --standalone --nproc_per_node="$n" -m trainer train --data "$DATA" --tokenizer "$TOKENIZER" \
      --out "$run_dir" "${args[@]}" > "$RESULT/gpus$n.log" 2>&1; then
    grep -E "training done" "$run_dir/train.log" | tail -n 1
  else
    failed=1
    echo "$SCRIPT: the run on $n GPU(s) failed: $(tail -n 1 "$RESULT/gpus$n.log") (log: $RESULT/gpus$n.log)" >&2
  fi
  runs+=("$run_dir")
done
python benchmarks/tables.py runs "${runs[@]}" > "$RESULT/ddp.md"
cat "$RESULT/ddp.md"
progress "done: $RESULT/ddp.md"
exit $failed
