#!/usr/bin/env bash
# Exports: which widths fit and what the round trip costs. Trains one config once, keeping its float weights,
# then re-exports those weights at several quantization and embedding widths (`python -m trainer export`) and
# scores each on the whole val split. Training never reads the export settings, so each row is what training with
# that export would have given.
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/export_widths.sh
#
# Optional settings (environment variables):
#   CONFIG    the run config (default spaces/presets/baseline.yaml, the baseline shape)
#   BUDGET_S  training seconds (default 180)
#   SEED      train.seed (default 1338)
#   SETS      more --set overrides for training (default "train.batch_tokens=131072 train.warmdown_steps=750")
#   EXPORTS   exports to score, space-separated, each BITS or BITS/EMBEDDING_BITS: export.quant_bits, then the
#             tied embedding's export.embedding_bits (16 = float16; without it the embedding takes BITS).
#             Default "8 8/16 6 6/8 6/16 5 5/16"
#   SMOKE=1   `trainer train --smoke` and the same exports on the CPU (seconds; checks the script)
#
# Writes to $OUT/exports_<gpu>_<date>/: the run (metrics.json, weights.pt, model.ptz, exports/*.ptz|json) and
# exports.md, one row per export: val_bpb, the round trip's cost, artifact bytes, whether it fits 16,000,000.
# Exit 1 if training or an export failed (logs are named), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init exports "$@"

CONFIG=${CONFIG:-spaces/presets/baseline.yaml}
BUDGET_S=${BUDGET_S:-180}
SEED=${SEED:-1338}
SETS=${SETS-train.batch_tokens=131072 train.warmdown_steps=750}
EXPORTS=${EXPORTS:-8 8/16 6 6/8 6/16 5 5/16}
[ -f "$CONFIG" ] || bench_fail "CONFIG=$CONFIG is not a file: name a run config YAML (e.g. spaces/presets/baseline.yaml)"
require_seconds BUDGET_S
require_int SEED
for export in $EXPORTS; do
  [[ $export =~ ^(5|6|8)(/(5|6|8|16))?$ ]] || bench_fail "EXPORTS has '$export': write BITS or BITS/EMBEDDING_BITS, BITS one of 5 6 8, EMBEDDING_BITS one of 5 6 8 16"
done

bench_start

run_dir=$RESULT/$(basename "$CONFIG" .yaml)
train=(--config "$CONFIG" --set "train.budget_s=$BUDGET_S" --set "train.seed=$SEED" --save-weights)
set_args "$SETS" train
device=()
[ "${SMOKE:-0}" = 1 ] && { train+=(--smoke); device=(--device cpu); }

failed=0
if [ -f "$run_dir/weights.pt" ] && [ -f "$run_dir/metrics.json" ]; then
  progress "training: $run_dir already holds a trained run, kept"
else
  progress "training $CONFIG for $BUDGET_S s (seed $SEED), keeping its float weights"
  bench_train training "$run_dir" "$RESULT/train.log" "${train[@]}" || exit 1
fi
total=$(wc -w <<< "$EXPORTS")
i=0
for export in $EXPORTS; do
  i=$((i + 1))
  embedding=0  # 0: at the matrices' width
  [[ $export == */* ]] && embedding=${export##*/}
  sets=(--set "export.quant_bits=${export%%/*}" --set "export.embedding_bits=$embedding")
  progress "export $i/$total: ${sets[*]}"
  if python -m trainer export "$run_dir" --data "$DATA" --tokenizer "$TOKENIZER" "${device[@]}" "${sets[@]}" \
      >> "$RESULT/exports.log" 2>&1; then
    tail -n 1 "$RESULT/exports.log"
  else
    failed=1
    echo "$SCRIPT: export ${sets[*]} failed: $(tail -n 1 "$RESULT/exports.log") (log: $RESULT/exports.log)" >&2
  fi
done
python benchmarks/tables.py exports "$run_dir" > "$RESULT/exports.md"
cat "$RESULT/exports.md"
progress "done: $RESULT/exports.md"
exit $failed
