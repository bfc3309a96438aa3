#!/usr/bin/env bash
# A search, then its best config against the baseline shape over seeds at the same budget: does a searched
# recurrence beat the baseline? The search's report also answers how much of its GPU time was training (the
# device-use table in report.md) and how its ASHA rung ranked the trials that finished.
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/search_then_rerun.sh
#
# Optional settings (environment variables):
#   SPACE           search space (default spaces/default.yaml)
#   TRIALS          trials to launch (default 24)
#   BUDGET_S        training seconds per trial and per rerun run (default 180)
#   GRACE_S         first ASHA rung in training seconds (default: the search's own, budget / 3); resuming with
#                   DRAIN_AFTER_S or FROM_STUDY=1, it moves the rung for the trials still to launch
#   TRIALS_PER_GPU  trials sharing a GPU, taking turns to train (default 2; 80 GB GPUs)
#   CPUS_PER_TRIAL  CPUs per trial (default 8)
#   SETS            --set overrides for every trial and both rerun configs (default: the settings of the figures
#                   in BENCHMARKS.md: "train.batch_tokens=131072 train.warmdown_steps=750")
#   SEARCH_SETS     more overrides for the search's trials only (default "train.rung_roundtrip=true
#                   export.zstd_level=1": rungs scored after the quantization round trip, fast trial exports)
#   BASELINE_CONFIG the rerun's other side (default: the rerun's, spaces/presets/baseline.yaml)
#   WIDEST_BITS     1 (default): the rerun exports both configs at the widest bits that fit; 0: as configured
#   SEEDS           seeds per config in the rerun (default 3; 0 runs the search only)
#   SEED_BASE       first rerun seed (default 1338)
#   MIN_LEAD_BPB    the rerun also tests a val_bpb lead above this (e.g. 0.01; default 0: the plain tests only)
#   GPUS            GPUs per rerun run (default 1); PARALLEL runs train at once (default 1)
#   RUNS_PER_GPU    rerun runs sharing each GPU, taking turns to train (default 1; 2 with GPUS=1 compiles and
#                   compresses one run while another trains)
#   NAME            the search's name (default search_<BUDGET_S>s)
#   STOP_AFTER_S    stop the search after this many seconds, as Ctrl-C would (default 0: run to the end);
#                   `python -m search resume NAME --storage $RESULT/searches` goes on
#   DRAIN_AFTER_S   launch no new trial after this many seconds and end when those in flight do (default 0: no
#                   limit); for machines held for a fixed time, with STOP_AFTER_S as a backstop and SEEDS=0 until
#                   the search has run all its trials. Run again (copying $RESULT to the next machine) to go on
#   FROM_STUDY=1    resume from the search's study alone (its folder came from another machine, so Tune's state
#                   is missing); implied by DRAIN_AFTER_S
#   SMOKE=1         a tiny space (benchmarks/smoke_space.yaml), 4 CPU trials of 1.5 s and `rerun --smoke`
#
# Around the recurrence record on one GPU at 180 s (its schedule scaled as in benchmarks/configs/record_180s_1gpu.yaml):
#   SPACE=spaces/record.yaml BASELINE_CONFIG=spaces/presets/record_0331_fit.yaml WIDEST_BITS=0 RUNS_PER_GPU=2 \
#   SETS="train.batch_tokens=131072 train.micro_batch_tokens=65536 train.warmdown_steps=820 \
#   train.muon_momentum_warmup_steps=350" DATA=... TOKENIZER=... OUT=... bash benchmarks/search_then_rerun.sh
#
# Writes to $OUT/searched_vs_baseline_<gpu>_<date>/: searches/NAME/ (the search: trials, study.db, report/),
# report.md, summary.json, frontier.csv/png (copied from its report), rerun/ (rerun.md, rerun.json, every run).
# Run again, the same day (another day: with RESULT_DATE), it resumes the search and keeps the rerun's finished runs.
# Exit 1 if the search or the rerun failed (their logs are named), 2 on bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init searched_vs_baseline "$@"

SPACE=${SPACE:-spaces/default.yaml}
TRIALS=${TRIALS:-24}
BUDGET_S=${BUDGET_S:-180}
TRIALS_PER_GPU=${TRIALS_PER_GPU:-2}
CPUS_PER_TRIAL=${CPUS_PER_TRIAL:-8}
SETS=${SETS-train.batch_tokens=131072 train.warmdown_steps=750}
SEARCH_SETS=${SEARCH_SETS-train.rung_roundtrip=true export.zstd_level=1}
SEEDS=${SEEDS:-3}
SEED_BASE=${SEED_BASE:-1338}
MIN_LEAD_BPB=${MIN_LEAD_BPB:-0}
GPUS=${GPUS:-1}
PARALLEL=${PARALLEL:-1}
RUNS_PER_GPU=${RUNS_PER_GPU:-1}
STOP_AFTER_S=${STOP_AFTER_S:-0}
DRAIN_AFTER_S=${DRAIN_AFTER_S:-0}
FROM_STUDY=${FROM_STUDY:-0}
WIDEST_BITS=${WIDEST_BITS:-1}
[ -f "$SPACE" ] || bench_fail "SPACE=$SPACE is not a file: name a search space YAML (see spaces/README.md)"
require_int TRIALS trials
require_seconds BUDGET_S
require_int TRIALS_PER_GPU trials
require_int CPUS_PER_TRIAL CPUs
require_int SEEDS seeds
require_int SEED_BASE
[[ $MIN_LEAD_BPB =~ ^(0|0?\.[0-9]+)$ ]] || bench_fail "MIN_LEAD_BPB=$MIN_LEAD_BPB is no val_bpb lead: pass a number below 1, e.g. 0.01"
require_int GPUS GPUs
require_int PARALLEL runs
require_int RUNS_PER_GPU runs
[ "$RUNS_PER_GPU" -ge 1 ] || bench_fail "RUNS_PER_GPU=0: pass 1 (a GPU per rerun run) or 2 (two taking turns)"
require_int STOP_AFTER_S seconds
require_int DRAIN_AFTER_S seconds
case $FROM_STUDY in 0|1) ;; *) bench_fail "FROM_STUDY=$FROM_STUDY: use 1 (resume from the study alone) or 0" ;; esac
[ -z "${GRACE_S:-}" ] || require_seconds GRACE_S
[ -z "${BASELINE_CONFIG:-}" ] || [ -f "$BASELINE_CONFIG" ] || bench_fail "BASELINE_CONFIG=$BASELINE_CONFIG is not a file: name a run config YAML, e.g. spaces/presets/record_0331_fit.yaml"
case $WIDEST_BITS in 0|1) ;; *) bench_fail "WIDEST_BITS=$WIDEST_BITS: use 1 (widest bits that fit) or 0 (as configured)" ;; esac
[ "$SEEDS" = 0 ] || [ "$SEEDS" -ge 2 ] || bench_fail "SEEDS=$SEEDS: the rerun's significance test needs at least 2 seeds (0 skips the rerun)"
NAME=${NAME:-search_${BUDGET_S}s}
[ "${SMOKE:-0}" = 1 ] && NAME=${NAME/#search_${BUDGET_S}s/smoke}
bench_start
STORAGE=$RESULT/searches

search=(--space "$SPACE" --name "$NAME" --trials "$TRIALS" --budget-s "$BUDGET_S" --seed 0 --enqueue-presets
        --data "$DATA" --tokenizer "$TOKENIZER" --storage "$STORAGE" --stop-after-s "$STOP_AFTER_S" --drain-after-s "$DRAIN_AFTER_S")
rerun=(--best --budget-s "$BUDGET_S" --seeds "$SEEDS" --seed-base "$SEED_BASE" --storage "$STORAGE"
       --out "$RESULT/rerun" --min-lead-bpb "$MIN_LEAD_BPB")
set_args "$SETS" search
set_args "$SETS" rerun
set_args "$SEARCH_SETS" search
if [ "${SMOKE:-0}" = 1 ]; then
  # Tiny CPU trials; the space's base holds their train settings.
  search=(--space benchmarks/smoke_space.yaml --name "$NAME" --trials 4 --budget-s 1.5 --grace-s 0.5
          --reduction-factor 2 --seed 0 --gpus-per-trial 0 --cpus-per-trial 1 --ray-address local
          --data "$DATA" --tokenizer "$TOKENIZER" --storage "$STORAGE")
  rerun=(--best --smoke --gpus 0 --budget-s 5 --seeds 2 --seed-base "$SEED_BASE" --storage "$STORAGE"
         --out "$RESULT/rerun" --min-lead-bpb "$MIN_LEAD_BPB")
else
  search+=(--gpus-per-trial 1 --trials-per-gpu "$TRIALS_PER_GPU" --cpus-per-trial "$CPUS_PER_TRIAL")
  [ -z "${GRACE_S:-}" ] || search+=(--grace-s "$GRACE_S")
  rerun+=(--gpus "$GPUS" --parallel "$PARALLEL" --runs-per-gpu "$RUNS_PER_GPU")
fi
[ "$WIDEST_BITS" = 1 ] && rerun+=(--widest-bits)
[ -z "${BASELINE_CONFIG:-}" ] || rerun+=(--baseline-config "$BASELINE_CONFIG")

failed=0
resume=(--stop-after-s "$STOP_AFTER_S")
# A plain resume restores Tune's own state, which takes no deadline and stays on the machine that ran it.
if [ "$DRAIN_AFTER_S" != 0 ] || [ "$FROM_STUDY" = 1 ]; then
  resume+=(--from-study --drain-after-s "$DRAIN_AFTER_S")
  [ -z "${GRACE_S:-}" ] || resume+=(--grace-s "$GRACE_S")  # moves an existing search's rung for trials to come
fi
run_or_resume_search "$NAME" "$STORAGE" "${resume[@]}"
progress "report of $NAME"
report_search "$NAME" "$STORAGE" && python -m search status "$NAME" --storage "$STORAGE" 2>&1 | head -n 12

if [ "$SEEDS" != 0 ]; then
  progress "rerun of $NAME's best against the baseline: ${rerun[*]}"
  if python -m search rerun "$NAME" "${rerun[@]}" > "$RESULT/rerun.log" 2>&1; then
    cat "$RESULT/rerun/rerun.md"
  else
    failed=1
    echo "$SCRIPT: the rerun stopped with an error: $(tail -n 1 "$RESULT/rerun.log") (log: $RESULT/rerun.log)" >&2
  fi
fi
progress "done: $RESULT"
exit $failed
