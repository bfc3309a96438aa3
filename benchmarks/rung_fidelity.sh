#!/usr/bin/env bash
# Rung fidelity: do early rungs rank configs as their final val_bpb does? A search in which no trial is stopped
# (`--early-stopping none`): every trial trains to the budget and still reports at the rungs, so each rung's
# scores rank against every trial's final, not only those an ASHA cut let through. Then `search fidelity`,
# optionally pooled with other searches of the same budget, and what a cut at each rung would have cost.
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/rung_fidelity.sh
#
# Optional settings (environment variables):
#   SPACE           search space (default spaces/default.yaml)
#   TRIALS          trials to launch (default 24)
#   BUDGET_S        training seconds per trial (default 180)
#   REPORT_EVERY_S  a report (evaluation + checkpoint) every this many training seconds (default 60: 60 s, 120 s)
#   COOLDOWN        also score each report after a learning-rate cooldown of this fraction of the steps so far,
#                   train.rung_cooldown_fraction (default 0: off)
#   TRIALS_PER_GPU  trials sharing a GPU, taking turns to train (default 2); CPUS_PER_TRIAL (default 8)
#   SETS            --set overrides for every trial (default "train.batch_tokens=131072 train.warmdown_steps=750
#                   train.rung_roundtrip=true export.zstd_level=1")
#   NAME            the search's name (default fidelity_<BUDGET_S>s)
#   POOL            other searches of the same budget to pool with this one, by name
#   POOL_STORAGE    the storage folder holding them; this search is stored there too (default $RESULT/searches)
#   DRAIN_AFTER_S   launch no trial after this many seconds (default 0: no limit); `python -m search resume NAME
#                   --from-study --storage $RESULT/searches` launches the rest
#   SMOKE=1         a tiny space (benchmarks/smoke_space.yaml), 4 CPU trials of 1.5 s reporting every 0.5 s
#
# Writes to $OUT/rung_fidelity_<gpu>_<date>/: searches/NAME/, report.md and summary.json (the fidelity table per
# rung: Spearman, p, the winner's rank there, regret of a cut), frontier.csv/png, fidelity_pooled.md/.csv.
# Run again, the same day (another day: with RESULT_DATE), it resumes the search. Exit 1 if the search failed (its log
# is named), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init rung_fidelity "$@"

SPACE=${SPACE:-spaces/default.yaml}
TRIALS=${TRIALS:-24}
BUDGET_S=${BUDGET_S:-180}
REPORT_EVERY_S=${REPORT_EVERY_S:-60}
COOLDOWN=${COOLDOWN:-0}
TRIALS_PER_GPU=${TRIALS_PER_GPU:-2}
CPUS_PER_TRIAL=${CPUS_PER_TRIAL:-8}
SETS=${SETS-train.batch_tokens=131072 train.warmdown_steps=750 train.rung_roundtrip=true export.zstd_level=1}
DRAIN_AFTER_S=${DRAIN_AFTER_S:-0}
[ -f "$SPACE" ] || bench_fail "SPACE=$SPACE is not a file: name a search space YAML (see spaces/README.md)"
require_int TRIALS trials
require_seconds BUDGET_S
require_seconds REPORT_EVERY_S
[[ $COOLDOWN =~ ^0*([.][0-9]+)?$|^0$ ]] || bench_fail "COOLDOWN=$COOLDOWN is not a fraction below 1 (e.g. 0.1; 0 is off)"
require_int TRIALS_PER_GPU trials
require_int CPUS_PER_TRIAL CPUs
require_int DRAIN_AFTER_S seconds
NAME=${NAME:-fidelity_${BUDGET_S}s}
[ "${SMOKE:-0}" = 1 ] && NAME=${NAME/#fidelity_${BUDGET_S}s/smoke}
bench_start
STORAGE=${POOL_STORAGE:-$RESULT/searches}

search=(--space "$SPACE" --name "$NAME" --trials "$TRIALS" --budget-s "$BUDGET_S" --seed 0 --enqueue-presets
        --early-stopping none --report-every-s "$REPORT_EVERY_S" --gpus-per-trial 1
        --trials-per-gpu "$TRIALS_PER_GPU" --cpus-per-trial "$CPUS_PER_TRIAL" --drain-after-s "$DRAIN_AFTER_S"
        --data "$DATA" --tokenizer "$TOKENIZER" --storage "$STORAGE")
set_args "$SETS" search
[ "$COOLDOWN" = 0 ] || search+=(--set "train.rung_cooldown_fraction=$COOLDOWN")
if [ "${SMOKE:-0}" = 1 ]; then
  search=(--space benchmarks/smoke_space.yaml --name "$NAME" --trials 4 --budget-s 1.5 --reduction-factor 2
          --early-stopping none --report-every-s 0.5 --seed 0 --gpus-per-trial 0 --cpus-per-trial 1
          --ray-address local --data "$DATA" --tokenizer "$TOKENIZER" --storage "$STORAGE")
fi

failed=0
run_or_resume_search "$NAME" "$STORAGE"
progress "report and rung fidelity of $NAME ${POOL:+pooled with $POOL}"
report_search "$NAME" "$STORAGE"
# shellcheck disable=SC2086  # POOL is a list of search names
if python -m search fidelity ${POOL:-} "$NAME" --storage "$STORAGE" --out "$RESULT" > "$RESULT/fidelity.log" 2>&1; then
  cat "$RESULT/fidelity.log"
else
  failed=1
  echo "$SCRIPT: no fidelity table: $(tail -n 1 "$RESULT/fidelity.log") (log: $RESULT/fidelity.log)" >&2
fi
progress "done: $RESULT"
exit $failed
